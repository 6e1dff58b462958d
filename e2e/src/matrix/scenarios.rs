//! The matrix's scenarios: what each role does to prove its checks, the
//! faults included (containerd restarted, the upstream offline, the serving
//! node lost mid-pull), and `cleanup` restoring `certs.d`.

use super::*;
use crate::throttle::Throttle;

impl Run<'_> {
    /// `reflektor configuration` (the host process's, or the pod's init
    /// container's, which has run already), then a look at what it wrote.
    pub(super) fn configure_mirror(&mut self, i: usize) -> Result<()> {
        let started = Instant::now();
        let result = (|| {
            let upstream = self.upstream.as_ref().context("the upstream is running")?;
            let member = &self.members[i];
            let node = member.node()?;
            let agent = member.agent()?;
            let certs = node.certs_dir();
            // What `Upstream::configure_node` wrote: the operator's file.
            let original = upstream.hosts_toml().into_bytes();
            self.runner_ref()?.configure(member, upstream)?;
            let dir = certs.join(upstream.addr().to_string());
            let written = fs::read_to_string(dir.join("hosts.toml"))
                .with_context(|| format!("reading {}/hosts.toml", dir.display()))?;
            let mirror = format!("[host.\"http://{}\"]", agent.addr());
            let origin = format!("[host.\"{}\"]", upstream.url());
            let at = |needle: &str| written.find(needle);
            match (at(&mirror), at(&origin)) {
                (Some(m), Some(o)) if m < o => {}
                (Some(_), None) => {}
                _ => bail!(
                    "hosts.toml for {} does not list the agent ({mirror}) ahead of the \
                     upstream:\n{written}",
                    upstream.addr()
                ),
            }
            ensure!(
                written.contains(&format!("server = \"{}\"", upstream.url())),
                "hosts.toml lost `server = \"{}\"`:\n{written}",
                upstream.url()
            );
            let backup = certs
                .join("_backup")
                .join(upstream.addr().to_string())
                .join("hosts.toml");
            let kept =
                fs::read(&backup).with_context(|| format!("reading {}", backup.display()))?;
            ensure!(
                kept == original,
                "{} differs from the operator's hosts.toml",
                backup.display()
            );
            Ok(format!(
                "agent {} ahead of upstream {}; original kept in _backup",
                agent.addr(),
                upstream.url()
            ))
        })();
        self.conclude(i, Column::MirrorConfig, started, result)
    }

    /// The seed pulls every image from the upstream through its mirror,
    /// which has nothing yet and lets containerd fall through.
    pub(super) async fn seed(&mut self, seed: usize, pushed: &Pushed) -> Result<()> {
        let mut images = vec![&pushed.app, &pushed.pinned];
        images.extend(&pushed.multi);
        if self.options.wants(Column::Large) || self.options.wants(Column::NodeLoss) {
            images.extend(&pushed.large);
        }
        images.extend(pushed.fault_images());
        let started = Instant::now();
        for image in &images {
            self.members[seed].pull(&image.by_tag, 0).await?;
        }
        for image in &images {
            self.wait_advertised(seed, &image.image).await?;
        }
        progress(
            &self.spec.name,
            &format!(
                "{} pulled {} images from the upstream and advertised them ({:.1}s)",
                self.members[seed].spec.name,
                images.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        let reason = "seeds the cluster: pulls from the upstream";
        let mut seeded = vec![Column::ByTag, Column::ByDigest];
        if pushed.multi.is_some() {
            seeded.push(Column::MultiArch);
        }
        if pushed.large.is_some() {
            seeded.push(Column::Large);
        }
        for column in seeded {
            self.record(seed, column, Cell::not_run("seed", reason), None);
        }
        Ok(())
    }

    /// By tag, by digest and the multi-arch index, each through peers.
    /// Returns how many pulls ran.
    pub(super) async fn pull_small_images(
        &mut self,
        i: usize,
        pushed: &Pushed,
        context: &str,
    ) -> Result<usize> {
        let mut pulls = 0;
        let host = self.host.clone();
        let mut pulls_of = vec![
            (Column::ByTag, &pushed.app, pushed.app.by_tag.as_str()),
            (
                Column::ByDigest,
                &pushed.pinned,
                pushed.pinned.by_digest.as_str(),
            ),
        ];
        if let Some(multi) = &pushed.multi {
            pulls_of.push((Column::MultiArch, multi, multi.by_tag.as_str()));
        } else {
            self.record(
                i,
                Column::MultiArch,
                Cell::not_run("n/a", "the cluster file lists no multi-arch image"),
                None,
            );
        }
        for (column, image, reference) in pulls_of {
            if !self.options.wants(column) {
                continue;
            }
            let size = scenario::layer_bytes(&image.image, &host)?;
            self.check(i, column, async |run: &mut Self| {
                let pulled = run.members[i].pull(reference, size).await?;
                Ok(format!(
                    "{reference}: {:.1} MiB from peers{context}",
                    pulled.from_peers as f64 / MIB as f64
                ))
            })
            .await?;
            self.held[i] += scenario::digests_held(&image.image, &host)? as f64;
            pulls += 1;
        }
        Ok(pulls)
    }

    /// The second node's containerd restarts under its agent; the node then
    /// pulls `later` from the upstream, which only it will hold.
    pub(super) async fn restart_and_pull_later(
        &mut self,
        second: usize,
        pushed: &Pushed,
    ) -> Result<()> {
        let restart = self.spec.faults.contains(&Fault::ContainerdRestart)
            && self.options.wants(Column::ContainerdRestart);
        if restart {
            let started = Instant::now();
            let result = async {
                let member = &mut self.members[second];
                member.node_mut()?.restart().await?;
                crate::cri::Cri::connect(member.node()?)
                    .await?
                    .wait_initialized()
                    .await?;
                // Through the mounted socket directory, the agent reaches the
                // new socket and serves again, without a restart of its own.
                let mirror = member.agent()?.addr();
                eventually(
                    "the agent ready again after containerd's restart",
                    || async {
                        let response = crate::http::get(mirror, "/readyz", "*/*").await;
                        Ok(response.is_ok_and(|r| r.status() == 200))
                    },
                )
                .await?;
                member
                    .agent_mut()?
                    .check_running()
                    .context("after containerd restarted")
            }
            .await;
            if let Err(error) = result {
                return self.conclude(second, Column::ContainerdRestart, started, Err(error));
            }
            progress(
                &self.spec.name,
                &format!(
                    "{}: containerd restarted under the agent ({:.1}s)",
                    self.members[second].spec.name,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        if restart || self.options.wants(Column::UpstreamOffline) {
            let started = Instant::now();
            let pulled = async {
                self.members[second].pull(&pushed.later.by_tag, 0).await?;
                self.wait_advertised(second, &pushed.later.image).await
            }
            .await;
            if restart && let Err(error) = pulled {
                let error = error.context("pulling an image after containerd's restart");
                return self.conclude(second, Column::ContainerdRestart, started, Err(error));
            }
            pulled?;
        }
        Ok(())
    }

    /// The third node pulls `later`, which only the second holds: proof that
    /// the restarted node advertised it, and that pulls work with the
    /// upstream offline.
    pub(super) async fn pull_later_from(
        &mut self,
        third: usize,
        second: usize,
        pushed: &Pushed,
        offline: bool,
        earlier_pulls: usize,
    ) -> Result<()> {
        let restart = self.spec.faults.contains(&Fault::ContainerdRestart)
            && self.options.wants(Column::ContainerdRestart);
        if !restart && !offline {
            return Ok(());
        }
        let size = scenario::layer_bytes(&pushed.later.image, &self.host)?;
        let served_before = self.members[second].agent()?.metric(&LOCAL_BYTES).await?;
        let started = Instant::now();
        let pulled = self.members[third].pull(&pushed.later.by_tag, size).await;
        let mut served = 0.0;
        if pulled.is_ok() {
            // The holder counts a body once it has written all of it.
            let holder = self.members[second].agent()?;
            let _ = eventually("the only holder counting what it served", || async {
                Ok(holder.metric(&LOCAL_BYTES).await? - served_before >= size as f64)
            })
            .await;
            served = holder.metric(&LOCAL_BYTES).await? - served_before;
        }
        let holder = self.members[second].spec.name.clone();
        let mut restarted = Ok(());
        if restart {
            let result = match &pulled {
                Ok(_) if served >= size as f64 => Ok(format!(
                    "after the restart, {holder} advertised {} and served it to {}",
                    pushed.later.by_tag, self.members[third].spec.name
                )),
                Ok(_) => Err(anyhow::anyhow!(
                    "{holder}, the only holder, served {served} bytes of the {size} the pull needed"
                )),
                Err(error) => Err(anyhow::anyhow!("{error:#}")),
            };
            restarted = self.conclude(second, Column::ContainerdRestart, started, result);
        }
        if offline {
            let result = pulled.map(|_| {
                format!(
                    "{} pulls through peers with the upstream stopped, the last from {holder} only",
                    earlier_pulls + 1
                )
            });
            self.conclude(third, Column::UpstreamOffline, started, result)?;
        }
        restarted
    }

    /// The third node pulls the large image from the two holders; with the
    /// node-loss fault, its containerd is slowed (SIGSTOP/SIGCONT) so that
    /// the pull is surely mid-transfer when the serving holder dies.
    pub(super) async fn large_with_node_loss(
        &mut self,
        third: usize,
        holders: [usize; 2],
        pushed: &Pushed,
    ) -> Result<()> {
        let Some(large) = &pushed.large else {
            for column in [Column::Large, Column::NodeLoss] {
                if !self.rows[third].cells.contains_key(&column) {
                    let cell = Cell::not_run("n/a", "the cluster file lists no large image");
                    self.record(third, column, cell, None);
                }
            }
            return Ok(());
        };
        let loss =
            self.spec.faults.contains(&Fault::NodeLoss) && self.options.wants(Column::NodeLoss);
        if !loss {
            if self.options.wants(Column::Large) {
                let size = scenario::layer_bytes(&large.image, &self.host)?;
                self.check(third, Column::Large, async |run: &mut Self| {
                    let pulled = run.members[third].pull(&large.by_tag, size).await?;
                    Ok(format!("{} MiB from peers", pulled.from_peers / MIB))
                })
                .await?;
            }
            return Ok(());
        }
        let size = scenario::layer_bytes(&large.image, &self.host)?;
        let started = Instant::now();
        let result = self.lose_mid_pull(third, holders, large, size).await;
        let result = result.map(|(lost, survivor, received, took)| {
            format!(
                "{lost} died with {} MiB of {} MiB transferred; {survivor} served the rest; \
                 the pull took {:.1}s",
                received / MIB,
                size / MIB,
                took.as_secs_f64()
            )
        });
        let pull_result = match &result {
            Ok(_) => Ok(format!(
                "{} MiB through peers, across a provider's loss",
                size / MIB
            )),
            Err(error) => Err(anyhow::anyhow!("{error:#}")),
        };
        let large = self.conclude(third, Column::Large, started, pull_result);
        let loss = self.conclude(third, Column::NodeLoss, started, result);
        large.and(loss)
    }

    pub(super) async fn lose_mid_pull(
        &mut self,
        third: usize,
        holders: [usize; 2],
        large: &PushedImage,
        size: u64,
    ) -> Result<(String, String, u64, Duration)> {
        let (pid, cri) = {
            let node = self.members[third].node()?;
            (node.pid(), crate::cri::Cri::connect(node).await?)
        };
        let mut local_before = Vec::new();
        for h in holders {
            local_before.push(self.members[h].agent()?.metric(&LOCAL_BYTES).await?);
        }
        let peer_before = self.members[third].agent()?.metric(&PEER_BYTES).await?;
        let started = Instant::now();
        let throttle = Throttle::start(pid);
        let pull = cri.pull_image(&large.by_tag);
        tokio::pin!(pull);
        let members = &mut self.members;
        let watch = async {
            let deadline = Instant::now() + crate::node::patience()? * 4;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let received = members[third].node()?.ingest_bytes();
                if received >= LOSS_AFTER {
                    for (k, &h) in holders.iter().enumerate() {
                        if members[h].agent()?.metric(&IN_FLIGHT).await? > 0.0 {
                            members[h].lose().await?;
                            return Ok::<_, anyhow::Error>((k, received));
                        }
                    }
                }
                ensure!(
                    Instant::now() < deadline,
                    "no holder was serving the large layer after {:?} ({} MiB at the puller); \
                     on a slow host raise REFLEKTOR_E2E_PATIENCE_SECS",
                    deadline - started,
                    received / MIB
                );
            }
        };
        let (lost, received) = tokio::select! {
            pulled = &mut pull => bail!(
                "the pull ended ({}) before a holder could be lost mid-transfer",
                match pulled { Ok(_) => "complete".to_owned(), Err(e) => format!("{e:#}") }
            ),
            watched = watch => watched?,
        };
        drop(throttle);
        let lost_name = self.members[holders[lost]].spec.name.clone();
        progress(
            &self.spec.name,
            &format!(
                "{lost_name} lost with {} MiB of the large layer at the puller",
                received / MIB
            ),
        );
        pull.await
            .with_context(|| format!("the large pull after {lost_name} died"))?;
        let took = started.elapsed();
        let survivor = holders[1 - lost];
        let survivor_agent = self.members[survivor].agent()?;
        // It resumes from what the puller's agent had, which is at least what
        // containerd had written, plus what sat in buffers on the way.
        let rest = size.saturating_sub(received + RESUME_SLACK) as f64;
        eventually(
            "the surviving holder counting the rest it served",
            || async {
                Ok(survivor_agent.metric(&LOCAL_BYTES).await? - local_before[1 - lost] >= rest)
            },
        )
        .await?;
        let agent = self.members[third].agent()?;
        eventually("the puller counting the layer from peers", || async {
            Ok(agent.metric(&PEER_BYTES).await? - peer_before >= size as f64)
        })
        .await?;
        Ok((
            lost_name,
            self.members[survivor].spec.name.clone(),
            received,
            took,
        ))
    }

    /// Stops each agent as kubelet would and runs `reflektor cleanup`: the
    /// node's certs.d must be what the operator had before `configuration`.
    pub(super) async fn cleanup(&mut self, roles: &[usize]) -> Result<()> {
        for &i in roles {
            if self.members[i].node.is_none() {
                self.record(
                    i,
                    Column::Cleanup,
                    Cell::not_run("lost", "the node was lost on purpose"),
                    None,
                );
                continue;
            }
            if !self.options.wants(Column::Cleanup) {
                continue;
            }
            let runner = self.runner_ref()?;
            self.check(i, Column::Cleanup, async |run: &mut Self| {
                let member = &mut run.members[i];
                let certs = member.node()?.certs_dir().to_owned();
                let upstream = run.upstream.as_ref().context("the upstream exists")?;
                let dir = certs.join(upstream.addr().to_string());
                let expected = BTreeMap::from([
                    (dir.clone(), None),
                    (
                        dir.join("hosts.toml"),
                        Some(upstream.hosts_toml().into_bytes()),
                    ),
                ]);
                member.stop_agent().await?;
                runner.cleanup(member).await?;
                let found = tree(&certs)?;
                ensure!(
                    found == expected,
                    "certs.d after cleanup holds {:?}; expected only {}",
                    found.keys().collect::<Vec<_>>(),
                    dir.join("hosts.toml").display()
                );
                Ok("certs.d is the operator's again, byte for byte".to_owned())
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until node `i` advertises every digest it holds, `image`'s
    /// now included: only then can a peer find it.
    pub(super) async fn wait_advertised(&mut self, i: usize, image: &TestImage) -> Result<()> {
        self.held[i] += scenario::digests_held(image, &self.host)? as f64;
        let held = self.held[i];
        let agent = self.members[i].agent()?;
        eventually(
            &format!("{} advertising {}", self.members[i].spec.name, image.tag),
            || async { Ok(agent.metric(&ADVERTISED_DIGESTS).await? >= held) },
        )
        .await
    }
}

/// Everything under `dir`: each file with its bytes, each directory with
/// `None`, so that a leftover empty directory (an empty `_backup/`, say)
/// counts as a difference too.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Option<Vec<u8>>>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                found.insert(path.clone(), None);
                pending.push(path);
            } else {
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                found.insert(path, Some(bytes));
            }
        }
    }
    Ok(found)
}
