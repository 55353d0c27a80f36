//! `im-mcp --remote`: tool calls forwarded to a running im-http over its HTTP API, so one queue
//! serves both interfaces.

use axum::http::Method;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};

/// A running im-http.
#[derive(Clone, Debug)]
pub struct Remote {
    url: String,
    key: Option<String>,
    client: reqwest::Client,
}

impl Remote {
    /// `GET path?params`: its JSON, or the tool error of its failure (unless the MCP client
    /// cancels the call first).
    pub async fn query(
        &self,
        ctx: &rmcp::service::RequestContext<rmcp::RoleServer>,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Result<Value, CallToolResult>, rmcp::ErrorData> {
        let url = reqwest::Url::parse_with_params(&format!("http://im{path}"), params)
            .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
        let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let (status, v) =
            crate::unless_cancelled(ctx, self.call(Method::GET, &path, None, None)).await?;
        Ok(if status == 200 {
            Ok(v)
        } else {
            Err(tool_error(status, &v))
        })
    }

    /// im-http at `url`, called with `key`.
    pub fn new(url: &str, key: Option<String>) -> Remote {
        Remote {
            url: url.trim_end_matches('/').to_owned(),
            key,
            client: reqwest::Client::builder().build().unwrap_or_default(),
        }
    }

    /// Call `path`; the status and the JSON body. `request_id` is passed on when the MCP caller
    /// gave one.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        request_id: Option<&str>,
    ) -> (u16, Value) {
        let mut rb = self.client.request(method, format!("{}{path}", self.url));
        if let Some(k) = &self.key {
            rb = rb.header("x-api-key", k);
        }
        if let Some(id) = request_id {
            rb = rb.header("x-request-id", id);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        match rb.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (
                503,
                json!({"error": {"type": "upstream_unavailable", "message": format!("cannot reach im-http at {}: {e}", self.url)}}),
            ),
        }
    }
}

/// A tool error from im-http's error body (the shared table's shape).
pub fn tool_error(status: u16, body: &Value) -> CallToolResult {
    let e = &body["error"];
    let kind = e["type"].as_str().unwrap_or("internal");
    let msg = e["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {status}"), str::to_owned);
    let text = match e["param"].as_str() {
        Some(p) => format!("{kind} ({status}): {msg} [field: {p}]"),
        None => format!("{kind} ({status}): {msg}"),
    };
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// The figures line of a seed response.
pub fn figures(v: &Value) -> String {
    crate::figures_line(
        v["request_id"].as_str().unwrap_or("?"),
        v["model"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["queue_wait_ms"].as_f64().unwrap_or(0.0),
        v["processing_ms"].as_f64().unwrap_or(0.0),
        v["attempts"].as_u64().unwrap_or(0),
    )
}
