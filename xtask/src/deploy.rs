//! `cargo xtask deploy-check`: the deployment files, checked statically (no Docker engine here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)
            .with_context(|| format!("{} does not parse as YAML", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Load a config through im's loader and validate it. `keys_from_env`: the deployment sets
/// `IM_API_KEYS` (compose's env file, a k8s Secret), which the binaries apply over the file.
fn load_config(label: &str, text: &str, keys_from_env: bool) -> Result<()> {
    let mut cfg = im_app::config::ImConfig::from_toml(text)
        .with_context(|| format!("{label}: im's loader refuses it"))?;
    if keys_from_env && !cfg.has_keys() {
        cfg.api_keys = vec!["key-from-IM_API_KEYS".into()];
    }
    cfg.validate()
        .with_context(|| format!("{label}: invalid"))?;
    Ok(())
}

/// The bin targets of the workspace, from `cargo metadata`.
fn workspace_bins(root: &Path) -> Result<BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut bins = BTreeSet::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                bins.insert(t["name"].as_str().unwrap_or_default().to_owned());
                bins.insert(format!("pkg:{}", p["name"].as_str().unwrap_or_default()));
            }
        }
    }
    Ok(bins)
}

fn host_port(s: &str) -> Option<(String, u16)> {
    let s = s
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let hp = s.split('/').next()?;
    let (h, p) = hp.rsplit_once(':')?;
    Some((h.to_owned(), p.parse().ok()?))
}

fn service_ports(svc: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for key in ["ports", "expose"] {
        for p in svc[key].as_array().into_iter().flatten() {
            let s = p
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| p.to_string());
            if let Some(last) = s.rsplit(':').next().and_then(|x| x.split('/').next())
                && let Ok(n) = last.trim_matches('"').parse()
            {
                ports.insert(n);
            }
        }
    }
    ports
}

/// Every check; returns what was checked, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let deploy = root.join("deploy");
    let mut done = Vec::new();
    let mut all = Vec::new();
    files(&deploy, &mut all)?;
    all.sort();
    for p in &all {
        match p.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                yaml_docs(p)?;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&std::fs::read_to_string(p)?)
                    .with_context(|| format!("{} does not parse as JSON", p.display()))?;
            }
            _ => {}
        }
    }
    done.push(format!(
        "{} YAML/JSON files parse",
        all.iter()
            .filter(|p| matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml" | "json")
            ))
            .count()
    ));

    // Compose: services, names and ports cross-check.
    let compose = yaml_docs(&deploy.join("docker-compose.yml"))?.remove(0);
    let services = compose["services"]
        .as_object()
        .context("compose: no services")?;
    for s in [
        "localai",
        "fence",
        "redis",
        "im",
        "proxy",
        "prometheus",
        "grafana",
        "jaeger",
    ] {
        ensure!(services.contains_key(s), "compose: service {s} missing");
    }
    let im = &services["im"];
    let upstream = im["environment"]["LOCALAI_URL"]
        .as_str()
        .context("compose: im has no LOCALAI_URL")?;
    let (host, port) =
        host_port(upstream).context("compose: LOCALAI_URL is not http://host:port")?;
    ensure!(
        services.contains_key(&host),
        "compose: LOCALAI_URL names {host}, which is no service"
    );
    ensure!(
        service_ports(&services[&host]).contains(&port),
        "compose: {host} does not expose {port}"
    );
    // Through the fencing gate, when there is one: it must gate a service port.
    if let Some(gate) = services
        .get(&host)
        .filter(|s| s["entrypoint"][0] == "im-fence")
    {
        let args: Vec<&str> = gate["entrypoint"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let behind = args
            .windows(2)
            .find(|w| w[0] == "--upstream")
            .map(|w| w[1])
            .context("compose: the fencing gate has no --upstream")?;
        let (gated, gated_port) =
            host_port(behind).context("compose: the gate's --upstream is not http://host:port")?;
        ensure!(
            services.contains_key(&gated) && service_ports(&services[&gated]).contains(&gated_port),
            "compose: the fencing gate's --upstream {behind} is not a compose service port"
        );
        // The gate and im share the cluster's secret (or anyone could forge a token).
        for (name, svc) in [("the fencing gate", gate), ("im", im)] {
            let file = svc["environment"]["IM_FENCE_SECRET_FILE"].as_str();
            let mounted = svc["secrets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|s| file == Some(format!("/run/secrets/{s}").as_str()));
            ensure!(
                mounted
                    && compose["secrets"]
                        .get(file.unwrap_or_default().trim_start_matches("/run/secrets/"))
                        .is_some(),
                "compose: {name} must read the cluster's secret from a compose secret (IM_FENCE_SECRET_FILE)"
            );
        }
        ensure!(
            gate["environment"]["IM_FENCE_SECRET_FILE"]
                == im["environment"]["IM_FENCE_SECRET_FILE"],
            "compose: the gate and im must read the same secret"
        );
    }
    let redis = im["environment"]["IM_REDIS_URL"]
        .as_str()
        .context("compose: im has no IM_REDIS_URL (the replicas share Redis)")?;
    let (redis_host, redis_port) = redis
        .strip_prefix("redis://")
        .and_then(|r| host_port(&format!("http://{r}")))
        .context("compose: IM_REDIS_URL is not redis://host:port/db")?;
    ensure!(
        services.contains_key(&redis_host)
            && service_ports(&services[&redis_host]).contains(&redis_port),
        "compose: IM_REDIS_URL {redis} is not a compose service port"
    );
    // `--scale im=3`: no fixed name, no published port (three replicas cannot publish one).
    ensure!(
        im.get("container_name").is_none() && im.get("ports").is_none(),
        "compose: im must scale (no container_name, no published ports: the proxy publishes)"
    );
    let otlp = im["environment"]["IM_OTLP_ENDPOINT"]
        .as_str()
        .context("compose: im exports no traces (IM_OTLP_ENDPOINT)")?;
    let (otlp_host, otlp_port) =
        host_port(otlp).context("compose: IM_OTLP_ENDPOINT is not http://host:port/…")?;
    ensure!(
        services.contains_key(&otlp_host)
            && service_ports(&services[&otlp_host]).contains(&otlp_port),
        "compose: IM_OTLP_ENDPOINT {otlp} is not a compose service port"
    );
    let listen = im["environment"]["IM_LISTEN"]
        .as_str()
        .context("compose: im has no IM_LISTEN")?;
    let (_, im_port) = host_port(listen).context("compose: IM_LISTEN")?;
    ensure!(
        service_ports(im).contains(&im_port),
        "compose: im listens on {im_port} but does not expose it"
    );
    let nginx = std::fs::read_to_string(deploy.join("proxy/nginx.conf"))?;
    let (_, proxy_port) = nginx
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .and_then(|p| p.trim_end_matches(';').trim().parse::<u16>().ok())
        .map(|p| ((), p))
        .context("proxy/nginx.conf: no `listen <port>;`")?;
    ensure!(
        nginx.contains(&format!("http://im:{im_port}")) && nginx.contains("resolver "),
        "proxy/nginx.conf must send to http://im:{im_port}, re-resolving the replicas"
    );
    ensure!(
        service_ports(&services["proxy"]).contains(&proxy_port)
            && services["proxy"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v
                    .as_str()
                    .is_some_and(|v| v.starts_with("./proxy/nginx.conf:"))),
        "compose: the proxy must mount proxy/nginx.conf and publish {proxy_port}"
    );
    let prom = yaml_docs(&deploy.join("prometheus/prometheus.yml"))?.remove(0);
    // Every replica is scraped: DNS discovery of the scaled service.
    let targets: Vec<String> = prom["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|j| j["dns_sd_configs"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["port"] == im_port)
        .flat_map(|s| s["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    ensure!(
        targets.iter().any(|t| t == "im"),
        "prometheus does not discover the im replicas on port {im_port}: {targets:?}"
    );
    ensure!(
        prom.to_string().contains("credentials_file"),
        "prometheus must scrape /metrics with the API key"
    );
    let ds = yaml_docs(&deploy.join("grafana/provisioning/datasources/prometheus.yml"))?.remove(0);
    let ds_url = ds["datasources"][0]["url"]
        .as_str()
        .context("grafana datasource url")?;
    let (ds_host, ds_port) = host_port(ds_url).context("grafana datasource url")?;
    ensure!(
        services.contains_key(&ds_host) && service_ports(&services[&ds_host]).contains(&ds_port),
        "grafana's datasource {ds_url} is not a compose service port"
    );
    done.push(
        "compose services, ports, Redis, the scalable im behind the proxy, Prometheus discovery, Grafana data source and OTLP endpoint cross-check".into(),
    );

    // Dashboard: every metric it queries is one im exports (the metrics crate's own list).
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(
        deploy.join("grafana/dashboards/im.json"),
    )?)?;
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().context("dashboard: no panels")? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(base) = word.strip_prefix("im_").map(|_| word) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
                    used.insert(base.to_owned());
                }
            }
        }
    }
    let known: BTreeSet<&str> = im_metrics::names::ALL.iter().copied().collect();
    for m in &used {
        ensure!(
            known.contains(m.as_str()),
            "the dashboard queries {m}, which im does not export"
        );
    }
    for needed in [
        im_metrics::names::QUEUE_DEPTH,
        im_metrics::names::QUEUE_WAIT_SECONDS,
        im_metrics::names::SWITCHES_TOTAL,
        im_metrics::names::IN_FLIGHT,
        im_metrics::names::UPSTREAM_ERRORS_TOTAL,
        im_metrics::names::OVERHEAD_SECONDS,
    ] {
        ensure!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
    done.push(format!(
        "dashboard queries {} metrics, all exported by im",
        used.len()
    ));

    // Dockerfile: builds and copies binaries that exist; non-root; health check.
    let docker = std::fs::read_to_string(deploy.join("Dockerfile"))?;
    let bins = workspace_bins(root)?;
    let mut built = 0;
    let build_cmd: String = docker
        .split("cargo build")
        .skip(1)
        .map(|rest| rest.split("&&").next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    for w in build_cmd.split_whitespace().collect::<Vec<_>>().windows(2) {
        if w[0] == "-p" {
            ensure!(
                bins.contains(&format!("pkg:{}", w[1])),
                "Dockerfile builds package {}, which has no binary",
                w[1]
            );
            built += 1;
        }
    }
    for word in docker.split_whitespace() {
        if let Some(bin) = word.strip_prefix("target/release/") {
            ensure!(
                bins.contains(bin),
                "Dockerfile copies target/release/{bin}, which no package builds"
            );
        }
        if let Some(src) = word.strip_prefix("deploy/") {
            ensure!(
                deploy.join(src).exists(),
                "Dockerfile copies deploy/{src}, which does not exist"
            );
        }
    }
    ensure!(built >= 2, "Dockerfile should build im-http and im-mcp");
    ensure!(
        docker.contains("USER ") && !docker.contains("USER root"),
        "Dockerfile must run as a non-root user"
    );
    ensure!(
        docker.contains("HEALTHCHECK") && docker.contains("/health"),
        "Dockerfile needs a HEALTHCHECK on /health"
    );
    ensure!(root.join(".dockerignore").exists(), ".dockerignore missing");
    done.push(
        "Dockerfile builds and copies existing binaries, runs non-root, checks /health".into(),
    );

    // Configs load through im's own loader.
    load_config(
        "deploy/im.example.toml",
        &std::fs::read_to_string(deploy.join("im.example.toml"))?,
        false,
    )?;
    load_config(
        "deploy/im.compose.toml",
        &std::fs::read_to_string(deploy.join("im.compose.toml"))?,
        true,
    )?;
    let mut k8s = Vec::new();
    for p in all.iter().filter(|p| p.starts_with(deploy.join("k8s"))) {
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            k8s.extend(yaml_docs(p)?);
        }
    }
    let kind = |k: &str| {
        k8s.iter()
            .filter(|d| d["kind"] == k)
            .cloned()
            .collect::<Vec<_>>()
    };
    let cm = kind("ConfigMap");
    let toml = cm
        .first()
        .and_then(|c| c["data"]["im.toml"].as_str())
        .context("k8s: ConfigMap im.toml missing")?;
    load_config("k8s ConfigMap im.toml", toml, true)?;
    let deps = kind("Deployment");
    let dep = deps
        .iter()
        .find(|d| d["metadata"]["name"] == "im")
        .context("k8s: Deployment im missing")?;
    ensure!(
        dep["spec"]["replicas"].as_u64().is_some_and(|n| n >= 2),
        "k8s: im runs as several replicas"
    );
    ensure!(
        dep["spec"]["strategy"]["type"] == "RollingUpdate",
        "k8s: replicas are replaced one by one (RollingUpdate)"
    );
    let hpa = kind("HorizontalPodAutoscaler");
    let hpa = hpa
        .first()
        .context("k8s: HorizontalPodAutoscaler missing")?;
    ensure!(
        hpa["spec"]["scaleTargetRef"]["name"] == "im"
            && hpa["spec"]["minReplicas"] == 2
            && hpa["spec"]["maxReplicas"] == 10,
        "k8s: the autoscaler scales im from 2 to 10"
    );
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        c["livenessProbe"]["httpGet"]["path"] == "/health",
        "k8s: liveness must probe /health"
    );
    ensure!(
        c["readinessProbe"]["httpGet"]["path"] == "/ready",
        "k8s: readiness must probe /ready"
    );
    ensure!(
        c["resources"]["limits"].is_object(),
        "k8s: resources missing"
    );
    ensure!(
        !kind("Secret").is_empty() && !kind("Service").is_empty(),
        "k8s: Secret and Service needed"
    );
    // The replicas share Redis: a Service of that name, on that port, backed by a workload.
    let redis_url = im_app::config::ImConfig::from_toml(toml)?
        .cluster
        .redis_url
        .context(
            "k8s: ConfigMap im.toml must set [cluster] redis_url (the replicas share Redis)",
        )?;
    let (redis_host, redis_port) = redis_url
        .strip_prefix("redis://")
        .and_then(|r| host_port(&format!("http://{r}")))
        .context("k8s: [cluster] redis_url is not redis://host:port/db")?;
    ensure!(
        kind("Service")
            .iter()
            .any(|s| s["metadata"]["name"] == redis_host.as_str()
                && s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["port"] == redis_port)),
        "k8s: no Service {redis_host} on port {redis_port} for [cluster] redis_url"
    );
    ensure!(
        kind("StatefulSet")
            .iter()
            .chain(&deps)
            .any(|w| w["metadata"]["name"] == redis_host.as_str()),
        "k8s: no workload runs {redis_host}"
    );
    // Each replica tells the others where it is: its pod IP.
    ensure!(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "IM_ADVERTISE_URL"
                && e["value"].as_str().is_some_and(|v| v.contains("$(POD_IP)"))),
        "k8s: IM_ADVERTISE_URL must be the pod's IP (the downward API's status.podIP)"
    );
    let claims: Vec<String> = kind("PersistentVolumeClaim")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    for w in kind("StatefulSet").iter().chain(&deps) {
        for v in w["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                ensure!(
                    claims.iter().any(|c| c == claim),
                    "k8s: volume claim {claim} has no PersistentVolumeClaim"
                );
            }
        }
    }
    let services = kind("Service");
    let svc = services
        .iter()
        .find(|s| s["metadata"]["name"] == "im")
        .context("k8s: Service im missing")?;
    let target = &svc["spec"]["ports"][0]["targetPort"];
    let port_names: Vec<&Value> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["name"])
        .collect();
    ensure!(
        port_names.contains(&target),
        "k8s: Service targetPort {target} is no container port"
    );
    done.push(
        "im.example.toml, im.compose.toml and the k8s ConfigMap load through im's config loader"
            .into(),
    );
    done.push(
        "k8s: im replicas (rolling updates, 2-10 autoscaler) on a Redis Service, advertised pod IPs, /health liveness, /ready readiness, resources, Service → container port, claimed volumes"
            .into(),
    );
    if done.is_empty() {
        bail!("nothing checked");
    }
    Ok(done)
}
