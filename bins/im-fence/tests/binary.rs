//! The `im-fence` binary gates a simulated LocalAI: the newest token passes, an older one is 409.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_passes_the_newest_token_and_refuses_an_older_one() {
    let sim = localai_sim::SimServer::start(localai_sim::SimConfig {
        time_scale: 0.0,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-fence"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &sim.url().to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("im-fence starts");
    let stderr = child.stderr.take().expect("stderr");
    let _guard = Kill(child);
    let line = BufReader::new(stderr)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let url = line
        .strip_prefix("im-fence: listening on ")
        .and_then(|r| r.split(',').next())
        .expect("the listening line")
        .to_owned();
    let call = |token: u64| {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .header("x-im-fence", token.to_string())
            .body(r#"{"model": "llama-3.2-3b-instruct", "messages": [{"role": "user", "content": "hi"}]}"#)
            .header("content-type", "application/json")
            .send()
    };
    assert_eq!(call(2).await.expect("send").status(), 200);
    assert_eq!(call(1).await.expect("send").status(), 409);
    assert_eq!(call(3).await.expect("send").status(), 200);
}
