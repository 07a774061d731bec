//! A KMS- and S3-compatible server for tests: moto, started in its own directory on a port it
//! binds itself, and stopped on drop. It serves one request at a time, so that its
//! conditional writes (`If-Match`) are atomic as AWS S3's are: moto's own threaded server
//! checks the condition apart from the write.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDir;

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
    /// moto's server app, one request at a time, on port 0 (the port it got is read back
    /// from its first line: no other test can take it between a probe and the bind).
    pub async fn start(name: &str) -> Self {
        let mut server = Self::spawn(name);
        if let Err(e) = server.ready().await {
            panic!("could not start moto: {e}\n{}", server.log());
        }
        server
    }

    fn spawn(name: &str) -> Self {
        let root = TestDir::new(&format!("kms-{name}"));
        let (process, endpoint) = spawn_moto(&root);
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

/// moto's server app in `root`, one request at a time, on a port it binds itself: the
/// process and its endpoint.
pub fn spawn_moto(root: &TestDir) -> (Child, String) {
    const SERVE: &str = "\
from werkzeug.serving import make_server
from moto.server import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
server = make_server('127.0.0.1', 0, app, threaded=False)
print(f'http://127.0.0.1:{server.server_port}', flush=True)
server.serve_forever()
";
    let python = moto_python();
    let log = std::fs::File::create(root.path().join("moto.log")).unwrap();
    let mut process = Command::new(&python)
        .args(["-c", SERVE])
        .current_dir(root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start moto with {python} (install: pip install 'moto[server]'): {e}")
        });
    let mut first = String::new();
    let stdout = process.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    let endpoint = first.trim().to_owned();
    (process, endpoint)
}

/// The Python that has moto: the interpreter of PITR_TEST_MOTO_SERVER's script (a venv's
/// `moto_server`, see scripts/test.sh) or `python3`.
fn moto_python() -> String {
    let Ok(script) = std::env::var("PITR_TEST_MOTO_SERVER") else {
        return "python3".into();
    };
    let text = std::fs::read_to_string(&script)
        .unwrap_or_else(|e| panic!("cannot read PITR_TEST_MOTO_SERVER {script}: {e}"));
    let first = text.lines().next().unwrap_or_default();
    match first.strip_prefix("#!") {
        Some(interpreter) if interpreter.contains("python") => interpreter.trim().to_owned(),
        _ => panic!("PITR_TEST_MOTO_SERVER {script} is not a Python script: {first}"),
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
