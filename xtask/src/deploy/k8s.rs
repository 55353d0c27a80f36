//! The Kubernetes manifests: replicas with rolling updates and an autoscaler, a Redis Service,
//! advertised pod IPs, probes, resources, the Service's port, claimed volumes, the ConfigMap's
//! configuration.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::Deploy;
use super::{host_port, load_config, yaml_docs};

pub(super) fn check(d: &Deploy) -> Result<String> {
    let mut k8s = Vec::new();
    for p in d.files.iter().filter(|p| p.starts_with(d.dir.join("k8s"))) {
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
    check_dns_upstreams(toml, &kind("Service"), &kind("StatefulSet"))?;
    Ok(
        "k8s: im replicas (rolling updates, 2-10 autoscaler) on a Redis Service, advertised pod IPs, /health liveness, /ready readiness, resources, Service → container port, claimed volumes, LocalAI pods behind a headless Service each with its fencing gate"
            .into(),
    )
}

/// Each `dns+http://name:port` upstream of the ConfigMap is a headless Service `name` with that
/// port, over a StatefulSet whose pods run their fencing gate on the port's target, in front of
/// a LocalAI on the pod's loopback (every call from im passes the gate).
fn check_dns_upstreams(toml: &str, services: &[Value], sets: &[Value]) -> Result<()> {
    let config = im_app::config::ImConfig::from_toml(toml)?;
    let dns: Vec<(String, u16)> = config
        .upstreams
        .iter()
        .filter_map(|u| u.url().strip_prefix("dns+"))
        .filter_map(host_port)
        .collect();
    ensure!(
        !dns.is_empty(),
        "k8s: ConfigMap im.toml names LocalAI by its headless Service (dns+http://localai:8081)"
    );
    for (host, port) in dns {
        let svc = services
            .iter()
            .find(|s| s["metadata"]["name"] == host.as_str())
            .with_context(|| {
                format!("k8s: no Service {host} for the upstream dns+http://{host}:{port}")
            })?;
        ensure!(
            svc["spec"]["clusterIP"] == "None",
            "k8s: Service {host} must be headless (clusterIP: None): its name must resolve to every pod"
        );
        let target = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"] == port)
            .map(|p| p["targetPort"].clone())
            .with_context(|| format!("k8s: Service {host} has no port {port}"))?;
        let set = sets
            .iter()
            .find(|w| w["spec"]["serviceName"] == host.as_str())
            .with_context(|| format!("k8s: no StatefulSet behind the Service {host}"))?;
        let containers = set["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let gate = containers
            .iter()
            .find(|c| {
                c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == target || p["containerPort"] == target)
            })
            .with_context(|| format!("k8s: no container of {host}'s pods serves {target}"))?;
        let command: Vec<&str> = gate["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            command.first() == Some(&"im-fence")
                && command
                    .windows(2)
                    .any(|w| w[0] == "--upstream" && w[1].starts_with("http://127.0.0.1:")),
            "k8s: {host}'s pods must serve port {port} through im-fence in front of LocalAI on loopback"
        );
        ensure!(
            gate["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "IM_FENCE_SECRET"),
            "k8s: {host}'s fencing gate needs IM_FENCE_SECRET (only tokens im signed pass)"
        );
    }
    Ok(())
}
