//! The matrix's report cells: one per node and check, recorded as each
//! check finishes, and what a failure or a skipped role leaves in the rest.

use super::*;

impl Run<'_> {
    /// The checks each role does not take part in, said once up front, so
    /// that a check the scenario forgets to record shows as a failure, not
    /// as "n/a" (see [`Run::fill_unrecorded`]).
    pub(super) fn record_roles(&mut self, roles: &[usize], pushed: &Pushed) {
        let [seed, second, third, ..] = roles[..] else {
            return;
        };
        let mut roleless = Vec::new();
        for column in [
            Column::UpstreamOffline,
            Column::NodeLoss,
            Column::Partition,
            Column::AgentKill,
            Column::DiskFull,
            Column::ContainerdRestart,
        ] {
            roleless.push((
                seed,
                column,
                "seeds from the upstream; the faults are others' roles",
            ));
        }
        for column in [Column::Partition, Column::AgentKill, Column::DiskFull] {
            roleless.push((
                second,
                column,
                "holds the images the third node pulls under the fault",
            ));
        }
        roleless.push((
            second,
            Column::UpstreamOffline,
            "pulls while the upstream is up; the third node pulls with it offline",
        ));
        roleless.push((
            second,
            Column::NodeLoss,
            "holds the large layer the third node pulls while a holder is lost",
        ));
        roleless.push((
            third,
            Column::ContainerdRestart,
            "the second node's containerd is the one restarted",
        ));
        for &extra in &roles[3..] {
            for column in [
                Column::Large,
                Column::UpstreamOffline,
                Column::NodeLoss,
                Column::Partition,
                Column::AgentKill,
                Column::DiskFull,
                Column::ContainerdRestart,
            ] {
                roleless.push((extra, column, "pulls the small images through peers only"));
            }
        }
        if pushed.multi.is_none() {
            roleless.push((
                seed,
                Column::MultiArch,
                "the cluster file lists no multi-arch image",
            ));
        }
        if pushed.large.is_none() {
            for node in [seed, second] {
                roleless.push((node, Column::Large, "the cluster file lists no large image"));
            }
        }
        for (i, column, reason) in roleless {
            // A fault the cluster file does not declare already says so.
            if !self.rows[i].cells.contains_key(&column) {
                self.record(i, column, Cell::not_run("n/a", reason), None);
            }
        }
    }

    /// Runs one check and records its cell.
    pub(super) async fn check(
        &mut self,
        i: usize,
        column: Column,
        body: impl AsyncFnOnce(&mut Self) -> Result<String>,
    ) -> Result<()> {
        let started = Instant::now();
        let result = body(self).await;
        self.conclude(i, column, started, result)
    }

    /// Records a check's result; a failure is also returned, to stop the cluster.
    pub(super) fn conclude(
        &mut self,
        i: usize,
        column: Column,
        started: Instant,
        result: Result<String>,
    ) -> Result<()> {
        let took = started.elapsed();
        match result {
            Ok(detail) => {
                self.record(i, column, Cell::pass(detail, Some(took)), Some(took));
                Ok(())
            }
            Err(error) => {
                let detail = format!("{error:#}");
                self.record(
                    i,
                    column,
                    Cell::Fail {
                        detail: detail.clone(),
                    },
                    Some(took),
                );
                Err(error.context(format!(
                    "{} on node {}",
                    column.key(),
                    self.members[i].spec.name
                )))
            }
        }
    }

    pub(super) fn record(&mut self, i: usize, column: Column, cell: Cell, took: Option<Duration>) {
        let took = took
            .filter(|t| t.as_secs_f64() >= 0.05)
            .map(|t| format!(" {:.1}s", t.as_secs_f64()))
            .unwrap_or_default();
        let line = match &cell {
            Cell::Pass { detail, .. } => format!("ok{took}: {detail}"),
            Cell::Expected { detail } => format!("expected{took}: {detail}"),
            Cell::Fail { detail } => format!("FAIL{took}: {detail}"),
            Cell::NotRun { short, reason } => format!("{short}: {reason}"),
            Cell::Unavailable { reason } => format!("unavailable: {reason}"),
        };
        progress(
            &self.spec.name,
            &format!("{} {} {line}", self.members[i].spec.name, column.key()),
        );
        self.rows[i].cells.insert(column, cell);
    }

    /// After a failure: the step that failed gets a Fail cell if it did not
    /// record one (a setup step, say), in the first check not yet recorded,
    /// which is where the scenario was; the rest did not run.
    pub(super) fn mark_rest_not_run(&mut self, error: &anyhow::Error) {
        let failed_cell = self
            .rows
            .iter()
            .any(|row| row.cells.values().any(Cell::is_failure));
        if !failed_cell {
            let missing = self.rows.iter_mut().find_map(|row| {
                let column = Column::ALL
                    .iter()
                    .copied()
                    .find(|c| !row.cells.contains_key(c))?;
                Some((row, column))
            });
            if let Some((row, column)) = missing {
                row.cells.insert(
                    column,
                    Cell::Fail {
                        detail: format!("{error:#}"),
                    },
                );
            }
        }
        let why = format!("not run: the cluster stopped at an earlier failure ({error:#})");
        for row in &mut self.rows {
            for &column in Column::ALL {
                row.cells
                    .entry(column)
                    .or_insert_with(|| Cell::not_run("stopped", why.clone()));
            }
        }
    }

    /// Cells left without a result: filtered out, or a harness bug.
    pub(super) fn fill_unrecorded(&mut self) {
        for (i, row) in self.rows.iter_mut().enumerate() {
            let name = &self.members[i].spec.name;
            for &column in Column::ALL {
                row.cells.entry(column).or_insert_with(|| {
                    if !self.options.wants(column) {
                        Cell::not_run("filtered", "not selected by --filter")
                    } else {
                        Cell::Fail {
                            detail: format!(
                                "the scenario recorded no result for {} on {name}: a harness \
                                 bug, since every role's checks are recorded or said not to apply",
                                column.key()
                            ),
                        }
                    }
                });
            }
        }
    }
}
