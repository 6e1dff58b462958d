//! The third node's pulls that meet a fault mid-transfer, each of an image
//! of its own that the seed and the second hold: the serving node cut off,
//! the serving agent killed pull after pull, and the puller's own disk full.
//! Each is judged by what containerd stored: every blob hashing to its
//! digest, nothing left half-written in its ingest directory.
//!
//! The loopback nodes share the host's network, so a partition is iptables
//! dropping every packet from and to the node's address. The kubelet
//! double's probes are cut off with it, as a real kubelet's would not be;
//! the partition lasts less than the liveness probe's 30 s, so it does not
//! restart the pod.

use super::*;
use crate::cri::Cri;
use crate::packet_filter::Dropped;
use crate::scenario::{FAULT_LAYER_MIB, KILL_ROUNDS};
use crate::throttle::Throttle;

/// The third node's tmpfs content store with the disk-full fault: room for
/// everything it pulls, the 256 MiB layer included. tmpfs takes memory only
/// for what it holds.
pub(super) const ROOMY_STORE: u64 = 2048 * MIB;
/// Free room left in the shrunk store: less than the layer.
const SHORT_ROOM: u64 = 16 * MIB;
/// How much of a fault image's layer the puller must have before the fault:
/// mid-transfer, far from the end.
const FAULT_AFTER: u64 = 8 * MIB;
/// How long a partition may stall a pull: the puller's agent gives a peer
/// 10 s of silence in a body before it resumes from another holder, plus
/// slack for a loaded host.
const PARTITION_BUDGET: Duration = Duration::from_secs(15);

/// A pull that met its fault.
struct Landed<T> {
    /// Index into the holders of the one serving when the fault landed.
    victim: usize,
    /// Bytes at the puller's containerd then.
    at: u64,
    /// What the fault returned: a guard that undoes it, a measurement.
    fault: T,
    /// The longest time containerd's ingest stood still after the fault.
    stall: Duration,
    took: Duration,
}

impl Run<'_> {
    /// The second pulls the fault images through its peer, so that the
    /// third has two holders to lose one of.
    pub(super) async fn hold_fault_images(&mut self, second: usize, pushed: &Pushed) -> Result<()> {
        for image in pushed.fault_images() {
            let size = scenario::layer_bytes(&image.image, &self.host)?;
            self.members[second].pull(&image.by_tag, size).await?;
            self.wait_advertised(second, &image.image).await?;
        }
        Ok(())
    }

    /// The holder cut off mid-layer must cost at most the stall bound, be
    /// named in a warning, and the rest come from the other holder.
    pub(super) async fn partition_mid_pull(
        &mut self,
        third: usize,
        holders: [usize; 2],
        pushed: &Pushed,
    ) -> Result<()> {
        let Some(image) = &pushed.partition else {
            return Ok(());
        };
        let started = Instant::now();
        let result = async {
            let landed = self
                .pull_through_fault(third, holders, image, async |run: &mut Self, h| {
                    Dropped::node(run.members[h].ip)
                })
                .await?;
            let Landed {
                victim,
                at,
                fault: cut,
                stall,
                took,
            } = landed;
            drop(cut);
            let (lost, other) = (holders[victim], holders[1 - victim]);
            let lost_addr = self.members[lost].agent()?.addr().to_string();
            ensure!(
                stall <= PARTITION_BUDGET,
                "the pull stood still for {stall:?} after {} was cut off, over {PARTITION_BUDGET:?}",
                self.members[lost].spec.name
            );
            let log = self.members[third].agent()?.log();
            ensure!(
                log.lines()
                    .any(|line| line.contains("WARN") && line.contains(&lost_addr)),
                "the puller's agent named {lost_addr}, the peer cut off, in no warning"
            );
            // Its probes were cut off too, for less than liveness allows.
            self.members[lost]
                .agent_mut()?
                .check_running()
                .context("after the partition healed")?;
            Ok(format!(
                "{} cut off with {} of {FAULT_LAYER_MIB} MiB at the puller; the pull stood \
                 still {:.1}s, then finished from {} ({:.1}s in all); every blob verified",
                self.members[lost].spec.name,
                at / MIB,
                stall.as_secs_f64(),
                self.members[other].spec.name,
                took.as_secs_f64()
            ))
        }
        .await;
        self.conclude(third, Column::Partition, started, result)
    }

    /// [`KILL_ROUNDS`] pulls, each with its serving agent SIGKILLed mid-layer
    /// and brought back before the next: every pull must finish from the
    /// other holder, and the restarted agents must advertise all they hold.
    pub(super) async fn kill_loop(
        &mut self,
        third: usize,
        holders: [usize; 2],
        pushed: &Pushed,
    ) -> Result<()> {
        if pushed.kills.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = async {
            let mut rounds = Vec::new();
            for image in &pushed.kills {
                let landed = self
                    .pull_through_fault(third, holders, image, async |run: &mut Self, h| {
                        let killed = Instant::now();
                        let Member { node, agent, .. } = &mut run.members[h];
                        let agent = agent.as_deref_mut().context("the holder runs an agent")?;
                        agent.crash().await?;
                        agent
                            .restarted(node.as_ref().context("the holder's node is up")?)
                            .await
                            .context("the killed agent coming back")?;
                        Ok(killed.elapsed())
                    })
                    .await?;
                let victim = holders[landed.victim];
                let held = self.held[victim];
                let agent = self.members[victim].agent()?;
                eventually(
                    &format!(
                        "{}'s restarted agent advertising again",
                        self.members[victim].spec.name
                    ),
                    || async { Ok(agent.metric(&ADVERTISED_DIGESTS).await? >= held) },
                )
                .await?;
                rounds.push(format!(
                    "{} at {} MiB, back in {:.1}s",
                    self.members[victim].spec.name,
                    landed.at / MIB,
                    landed.fault.as_secs_f64()
                ));
            }
            Ok(format!(
                "{KILL_ROUNDS} pulls of {FAULT_LAYER_MIB} MiB, the serving agent killed in each \
                 ({}); each finished from the other holder, every blob verified, and the \
                 restarted agents advertise all they hold",
                rounds.join("; ")
            ))
        }
        .await;
        self.conclude(third, Column::AgentKill, started, result)
    }

    /// Pulls `image` on the third node, its containerd throttled, and once
    /// [`FAULT_AFTER`] bytes are in and exactly one holder is serving, runs
    /// `fault` on that holder. The pull must then finish, every byte of it
    /// from peers and the rest from the other holder, with every blob whole.
    async fn pull_through_fault<T>(
        &mut self,
        third: usize,
        holders: [usize; 2],
        image: &PushedImage,
        fault: impl AsyncFnOnce(&mut Self, usize) -> Result<T>,
    ) -> Result<Landed<T>> {
        let size = scenario::layer_bytes(&image.image, &self.host)?;
        let (pid, cri) = {
            let node = self.members[third].node()?;
            (node.pid(), Cri::connect(node).await?)
        };
        let mut served_before = Vec::new();
        for h in holders {
            served_before.push(self.members[h].agent()?.metric(&LOCAL_BYTES).await?);
        }
        let peer_before = self.members[third].agent()?.metric(&PEER_BYTES).await?;
        let started = Instant::now();
        let deadline = started + crate::node::patience()? * 4;
        let mut throttle = Some(Throttle::start(pid));
        let pull = cri.pull_image(&image.by_tag);
        tokio::pin!(pull);
        let mut fault = Some(fault);
        let mut landed = None;
        let (mut last, mut grew, mut stall) = (0, Instant::now(), Duration::ZERO);
        let pulled = loop {
            tokio::select! {
                pulled = &mut pull => break pulled,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let bytes = self.members[third].node()?.ingest_bytes();
            let now = Instant::now();
            if bytes != last {
                (last, grew) = (bytes, now);
            } else if landed.is_some() {
                stall = stall.max(now - grew);
            }
            if landed.is_none()
                && bytes >= FAULT_AFTER
                && let Some(k) = self.serving(holders).await?
                && let Some(fault) = fault.take()
            {
                let done = fault(self, holders[k]).await?;
                // The rest at full speed: the fault has landed.
                throttle = None;
                landed = Some((k, bytes, done));
            }
            ensure!(
                Instant::now() < deadline,
                "the pull of {} has not finished after {:?} ({} MiB at the puller); on a slow \
                 host raise REFLEKTOR_E2E_PATIENCE_SECS",
                image.by_tag,
                deadline - started,
                bytes / MIB
            );
        };
        drop(throttle);
        let Some((victim, at, done)) = landed else {
            bail!(
                "the pull of {} ended ({}) before the fault could land mid-layer",
                image.by_tag,
                match pulled {
                    Ok(_) => "complete".to_owned(),
                    Err(error) => format!("{error:#}"),
                }
            );
        };
        let took = started.elapsed();
        let victim_name = self.members[holders[victim]].spec.name.clone();
        pulled.with_context(|| {
            format!(
                "the pull of {} after the fault on {victim_name}; {}",
                image.by_tag,
                self.members[third]
                    .agent()
                    .map(|a| registry_lines(&a.log()))
                    .unwrap_or_default()
            )
        })?;
        let puller = self.members[third].agent()?;
        eventually("the puller counting the layer from peers", || async {
            Ok(puller.metric(&PEER_BYTES).await? - peer_before >= size as f64)
        })
        .await?;
        let other = holders[1 - victim];
        let other_agent = self.members[other].agent()?;
        eventually(
            &format!(
                "{} counting the rest it served",
                self.members[other].spec.name
            ),
            || async { Ok(other_agent.metric(&LOCAL_BYTES).await? > served_before[1 - victim]) },
        )
        .await?;
        self.members[third]
            .node()?
            .verify_content(&scenario::stored_digests(&image.image, &self.host)?)?;
        self.held[third] += scenario::digests_held(&image.image, &self.host)? as f64;
        Ok(Landed {
            victim,
            at,
            fault: done,
            stall,
            took,
        })
    }

    /// The puller's store fills up mid-pull: containerd must say so, keep
    /// nothing of the layer, and the agent serve none of it; with room
    /// again, the same pull must succeed and be advertised.
    pub(super) async fn disk_full(&mut self, third: usize, pushed: &Pushed) -> Result<()> {
        let Some(image) = &pushed.disk_full else {
            return Ok(());
        };
        let host = self.host.clone();
        self.check(third, Column::DiskFull, async |run: &mut Self| {
            let node = run.members[third].node()?;
            let used = node.content_store_used()?;
            node.resize_content_store(used + SHORT_ROOM)?;
            let cri = Cri::connect(node).await?;
            let failed = cri.pull_image(&image.by_tag).await;
            // Room again whatever happened, for the checks after this one.
            node.resize_content_store(ROOMY_STORE)?;
            let error = match failed {
                Ok(_) => bail!(
                    "a {FAULT_LAYER_MIB} MiB layer fitted into {} MiB of free room",
                    SHORT_ROOM / MIB
                ),
                Err(error) => format!("{error:#}"),
            };
            ensure!(
                error.contains("no space left on device"),
                "the pull into a full store failed, but not saying the disk is full: {error}"
            );
            let layer = &image
                .image
                .platform(&host)
                .context("the image has the host's platform")?
                .layers[0]
                .blob
                .digest;
            let hex = layer.strip_prefix("sha256:").context("a sha256 digest")?;
            ensure!(
                !node.content_dir().join("blobs/sha256").join(hex).exists(),
                "containerd committed the layer that did not fit"
            );
            // Asked as a peer asks, the puller answers from its own store alone.
            let answer = crate::http::request(
                run.members[third].agent()?.addr(),
                hyper::Method::HEAD,
                &image.mirror_blob_path(layer)?,
                &[("x-reflektor-forwarded", "1")],
            )
            .await?;
            ensure!(
                answer.status() == 404,
                "the puller answered {} for the layer it could not store",
                answer.status()
            );
            cri.pull_image(&image.by_tag)
                .await
                .context("pulling again once the store has room")?;
            node.verify_content(&scenario::stored_digests(&image.image, &host)?)?;
            run.wait_advertised(third, &image.image).await?;
            Ok(format!(
                "with {} MiB free, the {FAULT_LAYER_MIB} MiB pull failed with \"no space left \
                 on device\", the layer neither stored nor served; with room again the same \
                 pull succeeded, every blob verified, and was advertised",
                SHORT_ROOM / MIB
            ))
        })
        .await
    }

    /// Which of `holders` is answering a request now, when exactly one is.
    async fn serving(&self, holders: [usize; 2]) -> Result<Option<usize>> {
        let mut serving = Vec::new();
        for (k, &h) in holders.iter().enumerate() {
            if self.members[h].agent()?.metric(&IN_FLIGHT).await? > 0.0 {
                serving.push(k);
            }
        }
        Ok(match serving[..] {
            [one] => Some(one),
            _ => None,
        })
    }
}

/// The agent's registry lines, for a failure message: the whole debug log
/// is mostly libp2p.
fn registry_lines(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("reflektor::registry"))
        .collect();
    format!(
        "the puller's agent's registry logged:\n{}",
        lines.join("\n")
    )
}
