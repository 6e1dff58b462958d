//! Which references a node mirrors: `--mirrored-registries` limits the
//! registries, `--registry-filters` excludes references by regular
//! expression, both as in Spegel. State sync asks it what to advertise and
//! the registry what to serve, so the two can never disagree.

use regex::Regex;

use super::RegistryHost;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty means every registry.
    pub mirrored: Vec<RegistryHost>,
    /// A reference that matches any of these is not mirrored.
    pub exclude: Vec<Regex>,
}

impl Filter {
    /// Whether a full reference (`docker.io/library/nginx:1.27`) of
    /// `registry` is served and advertised.
    pub fn allows(&self, registry: &RegistryHost, reference: &str) -> bool {
        let mirrored = self.mirrored.is_empty() || self.mirrored.contains(registry);
        mirrored && !self.exclude.iter().any(|filter| filter.is_match(reference))
    }
}
