//! `reflektor configuration`: the flags checked together, containerd asked
//! whether it reads the directory, then the hosts.toml tree written.

use std::process::ExitCode;

use crate::auth::BasicAuth;
use crate::cli::ConfigurationArgs;
use crate::doctor::{self, Status};
use crate::mirror_config::{self, MirrorRequest};

pub async fn configure(args: ConfigurationArgs) -> anyhow::Result<ExitCode> {
    let auth = BasicAuth::load(&args.auth.basic_auth_dir)?;
    if auth.is_some() {
        tracing::info!(dir = %args.auth.basic_auth_dir.display(), "writing basic-auth credentials into hosts.toml");
    }
    let request = MirrorRequest {
        registries: args.mirror.registries(),
        targets: args.mirror_targets,
        resolve_tags: args.mirror.resolve_tags,
        prepend_existing: args.prepend_existing,
        dial_timeout: args.dial_timeout,
        auth,
    };
    let config = match request.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reflektor: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let dir = &args
        .containerd
        .registry_config_path
        .containerd_registry_config_path;
    // Files containerd never reads would do nothing for this node, and
    // might overwrite another deployment's: refuse before writing.
    let report = doctor::run(&super::doctor::target(&args.containerd))
        .await
        .report;
    match report.check(doctor::CONFIG_PATH_CHECK) {
        Some(check) if check.status == Status::Fail => {
            let fix = check.fix.as_deref().unwrap_or("see `reflektor doctor`");
            eprintln!(
                "reflektor: containerd would not read hosts.toml files in {}, so nothing was \
                 written: {}\n  fix: {fix}",
                dir.display(),
                check.detail
            );
            return Ok(ExitCode::from(1));
        }
        Some(check) if check.status == Status::Warn => {
            tracing::warn!(source = %check.source, "{}; writing anyway", check.detail);
        }
        _ => {}
    }
    let report = mirror_config::configure(dir, &config)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
