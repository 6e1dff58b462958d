//! What `--log-level` means. A bare level (`debug`, Spegel's `DEBUG`) is
//! about reflektor: its own modules log at that level, and the libraries
//! under it (h2, tower, libp2p) at info at most, whose debug lines would
//! bury the agent's own, one per request. A filter directive
//! (`info,libp2p_kad=debug`) is taken as it is, for whoever needs the rest.

/// The `EnvFilter` directive `--log-level` stands for.
pub fn directive(level: &str) -> String {
    let bare = level.trim().to_ascii_lowercase();
    match bare.as_str() {
        "debug" | "trace" => format!("info,reflektor={bare}"),
        _ => level.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_verbose_level_is_reflektors_own() {
        assert_eq!(directive("DEBUG"), "info,reflektor=debug");
        assert_eq!(directive("trace"), "info,reflektor=trace");
        assert_eq!(directive("warn"), "warn");
        assert_eq!(directive("INFO"), "INFO");
        assert_eq!(directive("info,libp2p_kad=debug"), "info,libp2p_kad=debug");
    }
}
