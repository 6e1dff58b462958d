//! nginx serving a directory with `sendfile on`: the practical floor for
//! serving a file over HTTP, run with its own config and prefix so the
//! host's nginx setup is neither read nor touched.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian's package puts the binary.
const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` on `addr` with one worker in one process
    /// (`master_process off`), so its pid is the whole server's cost.
    pub async fn start(root: &Path, addr: SocketAddr) -> Result<Self> {
        if !Path::new(NGINX).is_file() {
            bail!(
                "{NGINX} is missing; install Debian's nginx package (apt-get install nginx-light)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("reflektor-bench-nginx-")
            .tempdir()?;
        let path = |name: &str| -> PathBuf { dir.path().join(name) };
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {error} warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  \
             default_type application/octet-stream;\n  \
             client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  \
             fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  \
             scgi_temp_path {tmp}/scgi;\n  \
             server {{\n    listen {addr};\n    root {root};\n  }}\n}}\n",
            pid = path("nginx.pid").display(),
            error = path("error.log").display(),
            tmp = dir.path().display(),
            root = root.display(),
        );
        let config_file = path("nginx.conf");
        fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {NGINX}"))?;
        let error_log = path("error.log");
        let mut nginx = Self {
            child,
            addr,
            _dir: dir,
        };
        nginx.wait_until_listening(&error_log).await?;
        Ok(nginx)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_listening(&mut self, error_log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "nginx exited ({status}) before listening on {}: {}",
                    self.addr,
                    fs::read_to_string(error_log).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {} within 10 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
