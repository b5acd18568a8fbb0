//! compile() and providers: see docs/architecture.md.
