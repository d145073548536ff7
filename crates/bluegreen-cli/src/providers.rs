//! From a spec to providers: the target's compute and router, the migration
//! runner, the metrics source, smoke tests, the secret source and the event
//! sinks, wired into a core [`Builder`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::provider::{
    AutoscalingState, ComputeProvider, ComputeStatus, EventSink, MetricsSource, MigrationPhase,
    MigrationRunner, PreparedRelease, SecretMetadata, SecretSource, SecretValue, SmokeTest,
    TrafficRouter,
};
use bluegreen_core::{
    BlueGreen, Builder, Color, Error, ErrorKind, Plan, Release, Result, TrafficSplit,
};
use bluegreen_http::HttpSmokeTest;
use bluegreen_local::command::{CommandMetrics, CommandSmokeTest};
use bluegreen_local::{Load, LocalCompute, LocalProxy, ProxyMetrics};

#[cfg(feature = "testing")]
use crate::fake::{ConstantMetrics, FakeProviders, FakeSmoke, FakeWorld};
use crate::slack::SlackWebhook;
use crate::spec::{
    LoadedSpec, MetricsKind, MigrationRunnerKind, Migrations, SecretRef, SmokeTestSpec, SourceKind,
    TargetKind,
};

/// Resolves [`SecretRef`]s: `env:NAME` from the deploying process's
/// environment, anything else from the target's secret store.
#[derive(Clone)]
pub struct RefSecrets {
    store: Option<Arc<dyn SecretSource>>,
    store_name: &'static str,
}

impl std::fmt::Debug for RefSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefSecrets")
            .field("store", &self.store_name)
            .finish()
    }
}

impl RefSecrets {
    /// The name under which `r` is looked up in this source.
    pub fn name_of(r: &SecretRef) -> String {
        match r {
            SecretRef::Store(n) => n.clone(),
            SecretRef::Env(v) => format!("env:{v}"),
        }
    }

    fn store(&self, name: &str) -> Result<&Arc<dyn SecretSource>> {
        self.store.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "secret {name:?}: the {} target has no secret store; refer to an environment variable instead (env:VARIABLE)",
                    self.store_name
                ),
            )
            .with_provider("secrets")
            .with_operation("get")
        })
    }
}

#[async_trait]
impl SecretSource for RefSecrets {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        if let Some(var) = name.strip_prefix("env:") {
            return std::env::var(var).map(SecretValue::new).map_err(|_| {
                Error::not_found(format!("environment variable {var} is not set"))
                    .with_provider("env")
                    .with_operation("get")
            });
        }
        let value = self.store(name)?.get(name).await?;
        // A value read from the store is masked in every log line from now
        // on, as the ones read from the environment are from the start.
        crate::logging::redact_secret_value(value.expose());
        Ok(value)
    }

    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        if let Some(var) = name.strip_prefix("env:") {
            if std::env::var_os(var).is_none() {
                return Err(
                    Error::not_found(format!("environment variable {var} is not set"))
                        .with_provider("env")
                        .with_operation("metadata"),
                );
            }
            return Ok(SecretMetadata {
                name: name.into(),
                last_rotated: None,
            });
        }
        self.store(name)?.metadata(name).await
    }
}

/// The ECS compute of the `ecs` target, handing ECS the full ARN of each of the
/// release's secrets: the spec names them as Secrets Manager knows them
/// (`prod/order-api/db-password`), while a task definition's `valueFrom` takes
/// an ARN, whose random suffix only Secrets Manager knows. The ARNs come from
/// the preflight's `DescribeSecret` of the same names, so this costs no call
/// in a normal deployment. Everything else goes to ECS unchanged.
struct EcsSecretArns {
    ecs: bluegreen_ecs::EcsCompute,
    secrets: Arc<bluegreen_secretsmanager::SecretsManagerSource>,
}

#[async_trait]
impl ComputeProvider for EcsSecretArns {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        let mut release = release.clone();
        for (var, name) in release.secrets.iter_mut() {
            if !name.starts_with("arn:") {
                *name = self.secrets.arn(name).await.map_err(|e| {
                    let msg = format!("release secret {var} ({name}): {}", e.message());
                    Error::new(e.kind(), msg)
                        .with_status(e.status())
                        .with_provider("ecs")
                        .with_operation("prepare")
                })?;
            }
        }
        self.ecs.prepare(color, &release).await
    }

    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        self.ecs.scale(color, count).await
    }

    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        self.ecs.status(color).await
    }

    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        self.ecs.statuses(colors).await
    }

    async fn endpoint(&self, color: Color) -> Result<Option<String>> {
        self.ecs.endpoint(color).await
    }

    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.ecs.autoscaling_state(color).await
    }

    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.ecs.suspend_autoscaling(color).await
    }

    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        self.ecs.restore_autoscaling(color, previous).await
    }
}

/// The local target's running pieces, kept to shut them down at the end.
pub struct LocalRuntime {
    /// The instances.
    pub compute: LocalCompute,
    /// The proxy.
    pub proxy: LocalProxy,
    /// The load sent through the proxy.
    pub load: Option<Load>,
}

/// Every provider a spec needs.
pub struct Assembled {
    /// Compute.
    pub compute: Arc<dyn ComputeProvider>,
    /// Router.
    pub router: Arc<dyn TrafficRouter>,
    /// Migrations.
    pub migrations: Option<Arc<dyn MigrationRunner>>,
    /// Metrics.
    pub metrics: Arc<dyn MetricsSource>,
    /// Metrics sources by name (`[[monitoring.commands]]`), for checks
    /// that name a `source`.
    pub named_metrics: Vec<(String, Arc<dyn MetricsSource>)>,
    /// Lifecycle hooks (`[[hooks]]`): commands and webhooks, run for real
    /// whatever the target.
    pub hooks: Vec<Arc<dyn bluegreen_core::provider::Hook>>,
    /// Smoke tests and staging checks.
    pub smoke: Vec<Arc<dyn SmokeTest>>,
    /// Secrets.
    pub secrets: Arc<RefSecrets>,
    /// Event sinks.
    pub sinks: Vec<Arc<dyn EventSink>>,
    /// The local target's runtime.
    pub local: Option<LocalRuntime>,
    /// The fake world.
    #[cfg(feature = "testing")]
    pub fake: Option<FakeWorld>,
}

impl Assembled {
    /// A builder for `plan` with every provider wired in.
    pub fn builder(&self, plan: Plan) -> Builder {
        let mut b = BlueGreen::builder(plan)
            .compute(self.compute.clone())
            .router(self.router.clone())
            .metrics(self.metrics.clone())
            .secrets(self.secrets.clone());
        for (name, m) in &self.named_metrics {
            b = b.metrics_named(name, m.clone());
        }
        if let Some(m) = &self.migrations {
            b = b.migrations(m.clone());
        }
        for s in &self.smoke {
            b = b.smoke_test(s.clone());
        }
        for h in &self.hooks {
            b = b.hook(h.clone());
        }
        for e in &self.sinks {
            b = b.events(e.clone());
        }
        b
    }

    /// Stops what the local target started.
    pub async fn shutdown(self) {
        if let Some(l) = self.local {
            if let Some(load) = l.load {
                let _ = load.stop().await;
            }
            l.compute.shutdown().await;
        }
    }
}

type TargetProviders = (
    Arc<dyn ComputeProvider>,
    Arc<dyn TrafficRouter>,
    Option<Arc<dyn SecretSource>>,
    &'static str,
);

/// Builds the providers of `loaded`. For the local target this starts the
/// serving color and the proxy.
pub async fn assemble(loaded: &LoadedSpec) -> Result<Assembled> {
    let spec = &loaded.spec;
    let mut local = None;
    #[cfg(feature = "testing")]
    let mut fake = None;
    let (compute, router, store, store_name): TargetProviders = match spec.target_kind() {
        #[cfg(not(feature = "testing"))]
        TargetKind::Fake => return Err(crate::spec::fake_not_built()),
        #[cfg(feature = "testing")]
        TargetKind::Fake => {
            let f = spec.target.fake.as_ref().expect("validated");
            let world = FakeWorld::open(
                &loaded.resolve(&f.state),
                &f.initial_version,
                spec.deployment.replicas,
                &f.migrations,
            )?;
            fake = Some(world.clone());
            let p = Arc::new(FakeProviders::new(world).with_secrets(secret_names(spec)));
            (
                p.clone(),
                p.clone(),
                Some(p as Arc<dyn SecretSource>),
                "fake",
            )
        }
        TargetKind::Local => {
            let l = spec.target.local.as_ref().expect("validated");
            let command = match &l.command {
                Some(c) => c.clone(),
                None => {
                    let exe = std::env::current_exe().map_err(|e| {
                        Error::not_found(format!("cannot find the bluegreen executable: {e}"))
                    })?;
                    vec![
                        exe.to_string_lossy().into_owned(),
                        bluegreen_local::demo::DEMO_APP_ARG.to_string(),
                    ]
                }
            };
            let compute = LocalCompute::builder()
                .command(command)
                .health_path(&l.health_path)
                .pass_env(l.pass_env.iter().cloned())
                .keep_logs(l.keep_logs)
                .health_interval(Duration::from_millis(200))
                .grace(Duration::from_secs(3))
                .build()?;
            let mut initial = Release::new(&l.initial_version, &spec.scope.image);
            initial.env = l.initial_env.clone();
            initial
                .env
                .entry("APP_VERSION".into())
                .or_insert_with(|| l.initial_version.clone());
            compute.prepare(Color::Green, &initial).await?;
            compute
                .scale(Color::Green, spec.deployment.replicas)
                .await?;
            wait_stable(&compute, Color::Green, spec.deployment.replicas).await?;
            let metrics = ProxyMetrics::default();
            let proxy = LocalProxy::builder(Arc::new(compute.clone()))
                .listen(l.listen.parse().expect("validated"))
                .initial_split(TrafficSplit::all_on(Color::Green))
                .metrics(metrics)
                .start()
                .await?;
            let load = (l.load_workers > 0).then(|| {
                Load::start(
                    &format!("{}/", proxy.url()),
                    l.load_workers,
                    Some(Duration::from_millis(2)),
                )
            });
            let c: Arc<dyn ComputeProvider> = Arc::new(compute.clone());
            let r: Arc<dyn TrafficRouter> = Arc::new(proxy.clone());
            local = Some(LocalRuntime {
                compute,
                proxy,
                load,
            });
            (c, r, None, "local")
        }
        TargetKind::EcsAlb => {
            let e = spec.target.ecs.as_ref().expect("validated");
            let a = spec.target.alb.as_ref().expect("validated");
            let config = crate::aws::sdk_config(e).await?;
            let mut ecs = bluegreen_ecs::EcsCompute::builder(&config)
                .cluster(&e.cluster)
                .service(Color::Blue, &e.services.blue)
                .service(Color::Green, &e.services.green);
            if let Some(c) = &e.container {
                ecs = ecs.container(c);
            }
            let mut alb = bluegreen_alb::AlbRouter::builder(&config)
                .target_group(Color::Blue, &a.target_groups.blue)
                .target_group(Color::Green, &a.target_groups.green);
            if let Some(l) = &a.listener_arn {
                alb = alb.listener(l);
            }
            if let Some(r) = &a.rule_arn {
                alb = alb.rule(r);
            }
            let sm = Arc::new(bluegreen_secretsmanager::SecretsManagerSource::new(&config));
            (
                Arc::new(EcsSecretArns {
                    ecs: ecs.build()?,
                    secrets: sm.clone(),
                }),
                Arc::new(alb.build()?),
                Some(sm as Arc<dyn SecretSource>),
                "secretsmanager",
            )
        }
    };
    let secrets = Arc::new(RefSecrets { store, store_name });
    let migrations: Option<Arc<dyn MigrationRunner>> = match &spec.migrations {
        None => None,
        Some(m) => match m.runner {
            #[cfg(not(feature = "testing"))]
            MigrationRunnerKind::Fake => return Err(crate::spec::fake_not_built()),
            #[cfg(feature = "testing")]
            MigrationRunnerKind::Fake => {
                let world = fake
                    .clone()
                    .expect("validated: fake runner needs the fake target");
                Some(Arc::new(FakeProviders::new(world)))
            }
            MigrationRunnerKind::Postgres => {
                Some(Arc::new(postgres_migrations(loaded, m, &secrets).await?))
            }
        },
    };
    let metrics: Arc<dyn MetricsSource> = match spec.monitoring.provider {
        #[cfg(not(feature = "testing"))]
        MetricsKind::Fake => return Err(crate::spec::fake_not_built()),
        #[cfg(feature = "testing")]
        MetricsKind::Fake => Arc::new(ConstantMetrics::new(
            spec.monitoring
                .fake
                .as_ref()
                .map(|f| f.values.clone())
                .unwrap_or_default(),
        )),
        MetricsKind::Local => Arc::new(
            local
                .as_ref()
                .expect("validated: local metrics need the local target")
                .proxy
                .metrics(),
        ),
        MetricsKind::Datadog => {
            let d = spec.monitoring.datadog.as_ref().expect("validated");
            Arc::new(datadog(&secrets, &d.site, &d.api_key, d.app_key.as_ref())?)
        }
        MetricsKind::Prometheus => {
            let p = spec.monitoring.prometheus.as_ref().expect("validated");
            Arc::new(bluegreen_prometheus::Prometheus::new(p.url.clone())?)
        }
        MetricsKind::Cloudwatch => Arc::new(cloudwatch_metrics(spec).await?),
    };
    let mut smoke: Vec<Arc<dyn SmokeTest>> = Vec::new();
    for t in &spec.smoke_tests {
        if let SmokeTestSpec::Command(c) = t {
            // A command runs for real, whatever the target.
            smoke.push(Arc::new(
                CommandSmokeTest::new(c.resolved(loaded))?.with_secrets(secrets.clone()),
            ));
        }
    }
    let http = spec.smoke_tests.iter().filter_map(SmokeTestSpec::http);
    let dependencies = spec.preflight.checks.iter();
    for c in spec.staging_checks.iter().chain(dependencies).chain(http) {
        #[cfg(feature = "testing")]
        if let Some(world) = &fake {
            smoke.push(Arc::new(FakeSmoke::new(&c.name, world.clone())));
            continue;
        }
        smoke.push(Arc::new(
            HttpSmokeTest::new(c.clone())?.with_secrets(secrets.clone()),
        ));
    }
    let mut hooks: Vec<Arc<dyn bluegreen_core::provider::Hook>> = Vec::new();
    for h in &spec.hooks {
        hooks.push(match &h.run {
            crate::spec::HookRun::Command(c) => Arc::new(
                bluegreen_local::command::CommandHook::new(c.resolved(loaded))?
                    .with_secrets(secrets.clone()),
            ),
            crate::spec::HookRun::Webhook(w) => Arc::new(
                bluegreen_http::webhook::WebhookHook::new(w.clone())?.with_secrets(secrets.clone()),
            ),
        });
    }
    let mut named_metrics: Vec<(String, Arc<dyn MetricsSource>)> = Vec::new();
    for c in &spec.monitoring.commands {
        named_metrics.push((
            c.0.name.clone(),
            Arc::new(CommandMetrics::new(c.resolved(loaded))?.with_secrets(secrets.clone())),
        ));
    }
    for (i, s) in spec.monitoring.sources.iter().enumerate() {
        let source: Arc<dyn MetricsSource> = match s.kind {
            SourceKind::Cloudwatch => Arc::new(cloudwatch_metrics(spec).await?),
            SourceKind::CloudwatchLogs => Arc::new(bluegreen_cloudwatch::CloudWatchLogs::new(
                &aws_config(spec).await?,
            )),
            SourceKind::CloudwatchAlarms => Arc::new(bluegreen_cloudwatch::CloudWatchAlarms::new(
                &aws_config(spec).await?,
            )),
            SourceKind::DatadogLogs | SourceKind::DatadogMonitors => {
                let d = spec.monitoring.datadog.as_ref().expect("validated");
                let dd = datadog(&secrets, &d.site, &d.api_key, d.app_key.as_ref())?;
                if s.kind == SourceKind::DatadogLogs {
                    Arc::new(dd.logs())
                } else {
                    Arc::new(dd.monitors())
                }
            }
            SourceKind::Postgres => Arc::new(postgres_metrics(spec, i, s, &secrets).await?),
        };
        named_metrics.push((s.name.clone(), source));
    }
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    if let Some(d) = spec.notifications.datadog.as_ref().filter(|d| d.events) {
        let (site, key) = match (&d.api_key, &spec.monitoring.datadog) {
            (Some(k), _) => (
                d.site.clone().unwrap_or_else(|| "datadoghq.com".into()),
                k.clone(),
            ),
            (None, Some(m)) => (d.site.clone().unwrap_or(m.site.clone()), m.api_key.clone()),
            (None, None) => unreachable!("validated"),
        };
        let sink: Arc<dyn EventSink> = Arc::new(datadog(&secrets, &site, &key, None)?);
        sinks.push(with_tags(sink, &d.tags));
    }
    if let Some(s) = &spec.notifications.slack {
        sinks.push(Arc::new(SlackWebhook::new(
            secrets.clone(),
            RefSecrets::name_of(&s.webhook_url),
        )?));
    }
    if let Some(p) = &spec.notifications.pagerduty {
        let mut pager = bluegreen_http::pagerduty::PagerDuty::new(
            secrets.clone(),
            RefSecrets::name_of(&p.routing_key),
        )?;
        if let Some(s) = p.severity {
            pager = pager.severity(s);
        }
        if let Some(s) = &p.source {
            pager = pager.source(s);
        }
        if let Some(e) = &p.endpoint {
            pager = pager.endpoint(e)?;
        }
        sinks.push(Arc::new(pager));
    }
    Ok(Assembled {
        compute,
        router,
        migrations,
        metrics,
        named_metrics,
        hooks,
        smoke,
        secrets,
        sinks,
        local,
        #[cfg(feature = "testing")]
        fake,
    })
}

/// The AWS configuration of `[target.ecs]` (validated present for the
/// CloudWatch sources).
async fn aws_config(spec: &crate::spec::Spec) -> Result<aws_types::SdkConfig> {
    crate::aws::sdk_config(
        spec.target
            .ecs
            .as_ref()
            .expect("validated: CloudWatch needs [target.ecs]"),
    )
    .await
}

/// CloudWatch metrics on `[target.ecs]`'s AWS configuration, knowing
/// `[target.alb]`'s target groups so a query may say `target_group={color}`.
async fn cloudwatch_metrics(
    spec: &crate::spec::Spec,
) -> Result<bluegreen_cloudwatch::CloudWatchMetrics> {
    let m = bluegreen_cloudwatch::CloudWatchMetrics::new(&aws_config(spec).await?);
    Ok(match &spec.target.alb {
        Some(a) => m.with_target_groups(&a.target_groups.blue, &a.target_groups.green),
        None => m,
    })
}

/// Every secret-store name `spec` refers to: its `[[secrets]]` and each
/// `{ secret = "NAME" }` reference (what the fake target's store holds).
#[cfg(feature = "testing")]
fn secret_names(spec: &crate::spec::Spec) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(n)) = m.get("secret") {
                    out.push(n.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out: Vec<String> = spec.secrets.iter().map(|s| s.name.clone()).collect();
    if let Ok(v) = serde_json::to_value(spec) {
        walk(&v, &mut out);
    }
    out
}

/// `sink`, putting `tags` (`[notifications.datadog] tags`) on every
/// notification it sends, after the engine's own.
pub fn with_tags(sink: Arc<dyn EventSink>, tags: &[String]) -> Arc<dyn EventSink> {
    if tags.is_empty() {
        return sink;
    }
    Arc::new(TaggedSink {
        inner: sink,
        tags: tags.to_vec(),
    })
}

/// See [`with_tags`].
struct TaggedSink {
    inner: Arc<dyn EventSink>,
    tags: Vec<String>,
}

#[async_trait]
impl EventSink for TaggedSink {
    async fn notify(&self, n: &bluegreen_core::provider::Notification) -> Result<()> {
        let mut n = n.clone();
        for t in &self.tags {
            if !n.tags.contains(t) {
                n.tags.push(t.clone());
            }
        }
        self.inner.notify(&n).await
    }
}

fn datadog(
    secrets: &Arc<RefSecrets>,
    site: &str,
    api_key: &SecretRef,
    app_key: Option<&SecretRef>,
) -> Result<bluegreen_datadog::Datadog> {
    let site: bluegreen_datadog::Site = site.parse().map_err(|e| {
        Error::invalid_input(format!("datadog site {site:?}: {e}"))
            .with_provider("datadog")
            .with_operation("build")
    })?;
    bluegreen_datadog::Datadog::builder()
        .site(site)
        .keys(
            secrets.clone(),
            RefSecrets::name_of(api_key),
            app_key.map_or_else(|| "env:DD_APP_KEY".to_string(), RefSecrets::name_of),
        )
        .build()
}

/// A `kind = "postgres"` source (`monitoring.sources[i]`): the URL from its
/// reference under the TLS policy of `[migrations]`, its statement timeout,
/// and the `pg_stat_statements` snapshot taken now when a check reads the
/// slow-query regression from it. Errors name the field, never the URL.
async fn postgres_metrics(
    spec: &crate::spec::Spec,
    i: usize,
    s: &crate::spec::SourceSpec,
    secrets: &Arc<RefSecrets>,
) -> Result<bluegreen_postgres::PostgresMetrics> {
    let url_ref = s.database_url.as_ref().expect("validated");
    let named = |e: Error, operation: &'static str| {
        let msg = format!(
            "monitoring.sources[{i}].database_url ({url_ref:?}): {}",
            e.message()
        );
        Error::new(e.kind(), msg)
            .with_status(e.status())
            .with_provider("postgres")
            .with_operation(operation)
    };
    let url = secrets
        .get(&RefSecrets::name_of(url_ref))
        .await
        .map_err(|e| named(e, "resolve database URL"))?;
    let db = bluegreen_postgres::Database::from_url(url.expose())
        .map_err(|e| named(e, "connect"))?
        .allow_plaintext(s.allow_plaintext);
    db.check_tls_policy().map_err(|e| named(e, "connect"))?;
    let mut metrics = bluegreen_postgres::PostgresMetrics::new(db);
    if let Some(t) = s.statement_timeout {
        metrics = metrics.with_statement_timeout(t);
    }
    let regression = spec.monitoring.checks.iter().any(|c| {
        c.source.as_deref() == Some(s.name.as_str())
            && c.query
                .trim_start()
                .starts_with(bluegreen_postgres::STATEMENTS_QUERY)
    });
    if regression {
        metrics
            .snapshot_statements()
            .await
            .map_err(|e| named(e, "snapshot pg_stat_statements"))?;
    }
    Ok(metrics)
}

/// The Postgres migration runner of `[migrations]`: the URL from its
/// reference, the files from its directory, backups in `backup_dir`
/// (`.bluegreen/backups` beside the spec if absent).
async fn postgres_migrations(
    loaded: &LoadedSpec,
    m: &Migrations,
    secrets: &Arc<RefSecrets>,
) -> Result<bluegreen_postgres::PostgresMigrations> {
    let url_ref = m.database_url.as_ref().expect("validated");
    let url = secrets
        .get(&RefSecrets::name_of(url_ref))
        .await
        .map_err(|e| {
            let msg = format!("migrations.database_url ({url_ref:?}): {}", e.message());
            Error::new(e.kind(), msg)
                .with_status(e.status())
                .with_provider("postgres")
                .with_operation("resolve database URL")
        })?;
    let named = |e: Error| {
        Error::new(
            e.kind(),
            format!("migrations.database_url ({url_ref:?}): {}", e.message()),
        )
        .with_provider("postgres")
        .with_operation("connect")
    };
    let db = bluegreen_postgres::Database::from_url(url.expose())
        .map_err(named)?
        .allow_plaintext(m.allow_plaintext);
    db.check_tls_policy().map_err(named)?;
    let dir = loaded.resolve(m.directory.as_deref().expect("validated"));
    let source = bluegreen_postgres::MigrationSource::from_dir(&dir).map_err(|e| {
        let msg = format!("migrations.directory {}: {}", dir.display(), e.message());
        Error::new(e.kind(), msg)
            .with_status(e.status())
            .with_provider("postgres")
            .with_operation("load migrations")
    })?;
    let backup_dir = loaded.resolve(
        m.backup_dir
            .as_deref()
            .unwrap_or(std::path::Path::new(".bluegreen/backups")),
    );
    let settings = bluegreen_postgres::MigrationSettings {
        backup: bluegreen_postgres::BackupSettings {
            dir: backup_dir,
            ..bluegreen_postgres::BackupSettings::default()
        },
        allow_out_of_order: m.allow_out_of_order,
        ..bluegreen_postgres::MigrationSettings::default()
    };
    let mut runner =
        bluegreen_postgres::PostgresMigrations::new(db, source).with_settings(settings);
    for table in &m.unchanged_row_counts {
        for phase in [MigrationPhase::Expand, MigrationPhase::Contract] {
            runner = runner.with_row_count_invariant(phase, table);
        }
    }
    Ok(runner)
}

async fn wait_stable(compute: &LocalCompute, color: Color, count: u32) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = compute.status(color).await?;
        if s.is_stable_at(count) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::timeout(format!(
                "the serving color {color} did not become ready within 30 s: {s}; logs in {}",
                compute.log_dir().display()
            ))
            .with_provider("local")
            .with_operation("start serving color"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bluegreen_core::provider::{Notification, Severity};

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Notification>>);

    #[async_trait]
    impl EventSink for Recorded {
        async fn notify(&self, n: &Notification) -> Result<()> {
            self.0.lock().unwrap().push(n.clone());
            Ok(())
        }
    }

    struct OneSecret;

    #[async_trait]
    impl SecretSource for OneSecret {
        async fn get(&self, _name: &str) -> Result<SecretValue> {
            Ok(SecretValue::new("sm-value-7d1e-ab99".to_string()))
        }

        async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
            Ok(SecretMetadata {
                name: name.into(),
                last_rotated: None,
            })
        }
    }

    #[tokio::test]
    async fn a_secret_read_from_the_store_is_masked_in_the_log_from_then_on() {
        let secrets = RefSecrets {
            store: Some(Arc::new(OneSecret)),
            store_name: "secretsmanager",
        };
        let line = "instance said: connecting with sm-value-7d1e-ab99";
        assert_eq!(crate::logging::mask(line), line, "not yet read");
        let value = secrets.get("prod/order-api/token").await.unwrap();
        assert_eq!(value.expose(), "sm-value-7d1e-ab99");
        assert_eq!(
            crate::logging::mask(line),
            "instance said: connecting with [redacted]"
        );
    }

    #[tokio::test]
    async fn the_notification_tags_of_the_spec_are_on_every_event() {
        let recorded = Arc::new(Recorded::default());
        let sink = with_tags(
            recorded.clone(),
            &["team:orders".to_string(), "env:prod".to_string()],
        );
        for (title, tags) in [
            ("Deployment Start", vec!["version:2.5.0".to_string()]),
            (
                "Deployment Complete",
                vec!["deployment:success".to_string(), "env:prod".to_string()],
            ),
        ] {
            let n = Notification {
                deployment_id: "dep-1".into(),
                service: "order-api".into(),
                version: "2.5.0".into(),
                title: title.into(),
                text: String::new(),
                severity: Severity::Info,
                tags,
                cause: None,
            };
            sink.notify(&n).await.unwrap();
        }
        let got: Vec<Vec<String>> = recorded
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.tags.clone())
            .collect();
        assert_eq!(
            got,
            vec![
                vec!["version:2.5.0", "team:orders", "env:prod"],
                vec!["deployment:success", "env:prod", "team:orders"],
            ]
        );
    }
}
