//! Compose: services, names and ports cross-check; Redis, the scalable im behind the proxy, the
//! fencing gate and its secret, Prometheus discovery, the Grafana data source, the OTLP endpoint.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::Deploy;
use super::{host_port, service_ports, yaml_docs};

pub(super) fn check(d: &Deploy) -> Result<String> {
    // Compose: services, names and ports cross-check.
    let compose = yaml_docs(&d.dir.join("docker-compose.yml"))?.remove(0);
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
    let nginx = std::fs::read_to_string(d.dir.join("proxy/nginx.conf"))?;
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
    let prom = yaml_docs(&d.dir.join("prometheus/prometheus.yml"))?.remove(0);
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
    let ds = yaml_docs(
        &d.dir
            .join("grafana/provisioning/datasources/prometheus.yml"),
    )?
    .remove(0);
    let ds_url = ds["datasources"][0]["url"]
        .as_str()
        .context("grafana datasource url")?;
    let (ds_host, ds_port) = host_port(ds_url).context("grafana datasource url")?;
    ensure!(
        services.contains_key(&ds_host) && service_ports(&services[&ds_host]).contains(&ds_port),
        "grafana's datasource {ds_url} is not a compose service port"
    );
    Ok(
        "compose services, ports, Redis, the scalable im behind the proxy, Prometheus discovery, Grafana data source and OTLP endpoint cross-check".into(),
    )
}
