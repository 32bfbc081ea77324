//! The tests' HTTP client over loopback (`ureq`): one call, any status.

use std::time::Duration;

use anyhow::{Context, Result};

/// A response: status code, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

/// Sends `method path` (no body) to 127.0.0.1:`port` with extra `headers`
/// (a `Host` among them replaces ureq's).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = agent.run(request.body(())?).with_context(|| format!("{method} {path} on port {port}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().with_config().limit(u64::MAX).read_to_vec()?;
    Ok(Response { status, headers, body })
}

/// The value of the series `name` (labels included, as written) on a
/// Prometheus text page.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics` on 127.0.0.1:`port`, and the value of `name` there.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    metric_value(&request(port, "GET", "/metrics", &[]).ok()?.text(), name)
}
