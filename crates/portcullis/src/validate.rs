//! `portcullis validate DIR`: compile a directory once and print every
//! object's status; non-zero exit when anything is invalid.

use std::io::Write;
use std::path::Path;

use portcullis_controller::file::load_dir;
use portcullis_controller::{compile, CompileOptions};

/// Returns the number of problems found (files that did not load and
/// objects whose status reports a problem).
pub fn validate(dir: &Path, out: &mut dyn Write) -> std::io::Result<usize> {
    let (snapshot, load_problems) = load_dir(dir);
    let compiled = compile(&snapshot, &CompileOptions::default());
    let mut count = 0;
    for p in &load_problems {
        writeln!(out, "ERROR  {p}")?;
        count += 1;
    }
    for status in &compiled.statuses {
        if status.problems.is_empty() {
            writeln!(out, "OK     {}", status.display_name())?;
        } else {
            for problem in &status.problems {
                writeln!(out, "ERROR  {}: {problem}", status.display_name())?;
                count += 1;
            }
        }
    }
    let routes: usize = compiled
        .table
        .ports
        .iter()
        .flat_map(|p| &p.virtual_hosts)
        .map(|v| v.routes.len())
        .sum();
    writeln!(
        out,
        "{} port(s), {routes} route match(es) compiled; {count} problem(s)",
        compiled.table.ports.len()
    )?;
    Ok(count)
}
