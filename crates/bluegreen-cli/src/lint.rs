//! The backward-compatibility lint of the spec's expand migrations
//! ([`bluegreen_postgres::lint_expand_file`]'s rules), run by `validate` and
//! before a deployment starts: a finding refuses it before anything changes.
//! A resumed deployment is not linted again: its files are the ones it
//! started with (the ledger's checksums say so), and refusing it halfway
//! would leave it unfinished.

use bluegreen_core::Error;

use crate::spec::{LoadedSpec, MigrationRunnerKind};

/// Lints the expand migrations of the spec's `[migrations]` directory
/// (postgres runner only): `Ok` when there is no finding, else an
/// [`ErrorKind::InvalidInput`](bluegreen_core::ErrorKind) error listing
/// each finding as `path/to/file.up.sql:line: rule: message`. Also fails,
/// naming the directory, when the migration files do not load.
pub fn check_migrations(l: &LoadedSpec) -> Result<(), Error> {
    let Some(m) = &l.spec.migrations else {
        return Ok(());
    };
    let (MigrationRunnerKind::Postgres, Some(dir)) = (m.runner, &m.directory) else {
        return Ok(());
    };
    let dir = l.resolve(dir);
    let in_dir = |e: &Error| {
        Error::new(
            e.kind(),
            format!("migrations.directory {}: {}", dir.display(), e.message()),
        )
        .with_status(e.status())
        .with_provider("postgres")
        .with_operation("lint migrations")
    };
    let source = bluegreen_postgres::MigrationSource::from_dir(&dir).map_err(|e| in_dir(&e))?;
    let findings: Vec<bluegreen_postgres::Finding> = source
        .lint()
        .into_iter()
        .map(|mut f| {
            f.file = dir.join(&f.file).display().to_string();
            f
        })
        .collect();
    bluegreen_postgres::refuse_findings(&findings).map_err(|e| in_dir(&e))
}
