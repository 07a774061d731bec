//! A KMS-compatible server for tests: moto's `moto_server`, started on a free port in its own
//! directory and stopped on drop.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestDir, free_port};

/// Credentials moto accepts (it checks none); the region its keys live in.
// The S3 servers' credentials (moto takes any): the KMS tests set them in the process
// environment, which the S3 tests of the same binary read.
pub const ACCESS_KEY: &str = super::S3_ACCESS_KEY;
pub const SECRET_KEY: &str = super::S3_SECRET_KEY;
pub const REGION: &str = "us-east-1";

pub struct KmsServer {
    pub endpoint: String,
    client: aws_sdk_kms::Client,
    process: Child,
    root: TestDir,
}

impl KmsServer {
    /// moto_server (or PITR_TEST_MOTO_SERVER) on a free port. A port taken by another test
    /// between our probe and moto's bind makes moto exit or answer wrong: try another.
    pub async fn start(name: &str) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = Self::spawn(name);
            match server.ready().await {
                Ok(()) => return server,
                Err(e) => last_error = format!("{e}\n{}", server.log()),
            }
        }
        panic!("could not start moto_server: {last_error}");
    }

    fn spawn(name: &str) -> Self {
        let root = TestDir::new(&format!("kms-{name}"));
        let binary =
            std::env::var("PITR_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let log = std::fs::File::create(root.path().join("moto.log")).unwrap();
        let process = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (install: pip install 'moto[server]'): {e}")
            });
        let endpoint = format!("http://127.0.0.1:{port}");
        let credentials =
            aws_sdk_kms::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "pitr-tests");
        let config = aws_sdk_kms::config::Builder::new()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(REGION))
            .credentials_provider(credentials)
            .endpoint_url(&endpoint)
            .build();
        KmsServer {
            endpoint,
            client: aws_sdk_kms::Client::from_conf(config),
            process,
            root,
        }
    }

    /// Up, ours (still running after answering), and answering KMS calls.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return Err(format!("moto_server exited: {status}"));
            }
            match self.client.list_keys().send().await {
                Ok(_) if self.process.try_wait().unwrap().is_none() => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "{} did not answer ListKeys: {}",
                        self.endpoint,
                        aws_sdk_kms::error::DisplayErrorContext(e)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("moto.log")).unwrap_or_default()
    }

    /// A new symmetric key; returns its key id.
    pub async fn create_key(&self, description: &str) -> String {
        let out = self
            .client
            .create_key()
            .description(description)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("CreateKey: {}", aws_sdk_kms::error::DisplayErrorContext(e))
            });
        out.key_metadata.unwrap().key_id
    }

    /// The server's own client, to call KMS as pitr does not.
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// What pitr needs to reach this server through the AWS SDK's own chain, and nothing from
    /// the machine's AWS profiles (an empty one).
    pub fn env(&self) -> Vec<(String, String)> {
        let none = self.root.path().join("empty-aws-profile");
        if !none.exists() {
            std::fs::write(&none, "").unwrap();
            std::fs::set_permissions(&none, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        vec![
            ("AWS_ENDPOINT_URL_KMS".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), none.display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                none.display().to_string(),
            ),
        ]
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
