//! Reaching into a node, where the cluster allows it: kind's nodes are
//! containers (`docker exec {node}`), others may take `ssh {node}`. With
//! it, the suite reads hosts.toml on the node's own filesystem and can
//! block the registry for a node; without it, it reads only what the API
//! server shows.

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;

/// Runs a shell script on a node.
#[async_trait]
pub trait NodeShell: Send + Sync {
    /// The script's standard output; an error, with its standard error,
    /// when it exits non-zero.
    async fn run(&self, node: &str, script: &str) -> Result<String>;
}

/// `--node-shell`: a command line with `{node}` in it, to which
/// `sh -c <script>` is appended, e.g. `docker exec {node}`.
#[derive(Debug, Clone)]
pub struct CommandShell {
    template: Vec<String>,
}

impl CommandShell {
    pub fn parse(template: &str) -> Result<Self> {
        let template: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
        ensure!(
            template.iter().any(|word| word.contains("{node}")),
            "--node-shell {:?} does not name the node; expected a command with {{node}} in \
             it, e.g. \"docker exec {{node}}\" for kind",
            template.join(" ")
        );
        Ok(CommandShell { template })
    }

    /// The command line for `script` on `node`.
    pub fn argv(&self, node: &str, script: &str) -> Vec<String> {
        self.template
            .iter()
            .map(|word| word.replace("{node}", node))
            .chain(["sh".to_owned(), "-c".to_owned(), script.to_owned()])
            .collect()
    }
}

#[async_trait]
impl NodeShell for CommandShell {
    async fn run(&self, node: &str, script: &str) -> Result<String> {
        let argv = self.argv(node, script);
        let output = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {:?} for node {node}", argv[0]))?;
        if !output.status.success() {
            bail!(
                "on {node}, `{script}` exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("the node's shell printed non-UTF-8 output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_template_names_the_node_and_runs_the_script() {
        let shell = CommandShell::parse("env NODE={node}").unwrap();
        assert_eq!(
            shell.argv("kind-worker", "cat /x"),
            ["env", "NODE=kind-worker", "sh", "-c", "cat /x"]
        );
        let out = shell.run("kind-worker", "echo $NODE").await.unwrap();
        assert_eq!(out.trim(), "kind-worker");
        let error = shell.run("kind-worker", "echo no >&2; exit 3").await;
        assert!(format!("{:#}", error.unwrap_err()).contains("no"));
        assert!(CommandShell::parse("docker exec").is_err());
    }
}
