//! `reflektor configuration`: the flags checked together, then the
//! hosts.toml tree written.

use std::process::ExitCode;

use crate::cli::ConfigurationArgs;
use crate::mirror_config::{self, MirrorRequest};

pub fn configure(args: ConfigurationArgs) -> anyhow::Result<ExitCode> {
    let request = MirrorRequest {
        registries: args.mirror.registries(),
        targets: args.mirror_targets,
        resolve_tags: args.mirror.resolve_tags,
        prepend_existing: args.prepend_existing,
        dial_timeout: args.dial_timeout,
    };
    let config = match request.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reflektor: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let dir = &args.registry_config_path.containerd_registry_config_path;
    let report = mirror_config::configure(dir, &config)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
