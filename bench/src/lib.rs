//! Benchmarks for reflektor live in `benches/`; this library is empty until
//! the side-by-side comparison runner needs shared code.
