//! The AWS SDK configuration shared by the S3 store and the KMS key service.

use std::path::Path;

use aws_config::BehaviorVersion;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};

/// The SDK's shared configuration (credentials, region, endpoint from its default chain).
/// Without a region anywhere it is `us-east-1`, which S3-compatible servers accept. With an
/// endpoint of our own (an S3- or KMS-compatible server, a VPC endpoint) the region does not
/// come from the EC2 metadata probe of the default chain, which off EC2 costs a timeout on
/// every archive-push.
pub async fn shared_config(endpoint_given: bool) -> aws_config::SdkConfig {
    let profile_files = crate::ownership::became_home().map(profile_files_in);
    let region = if endpoint_given {
        let mut from_profile = ProfileFileRegionProvider::builder();
        if let Some(files) = &profile_files {
            from_profile = from_profile.profile_files(files.clone());
        }
        RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(from_profile.build())
            .or_else("us-east-1")
    } else {
        RegionProviderChain::default_provider().or_else("us-east-1")
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(files) = profile_files {
        loader = loader.profile_files(files);
    }
    loader.load().await
}

/// The profile files of the user whose home is `home` (a root run that became the data
/// directory's owner: HOME still names root's). AWS_CONFIG_FILE and
/// AWS_SHARED_CREDENTIALS_FILE still win, as the SDK's defaults let them; a missing file is
/// an empty one, as the SDK takes its default files.
fn profile_files_in(home: &Path) -> EnvConfigFiles {
    let mut files = EnvConfigFiles::builder();
    for (kind, variable, name) in [
        (EnvConfigFileKind::Config, "AWS_CONFIG_FILE", "config"),
        (
            EnvConfigFileKind::Credentials,
            "AWS_SHARED_CREDENTIALS_FILE",
            "credentials",
        ),
    ] {
        let path = home.join(".aws").join(name);
        files = if std::env::var_os(variable).is_some_and(|v| !v.is_empty()) {
            match kind {
                EnvConfigFileKind::Config => files.include_default_config_file(true),
                EnvConfigFileKind::Credentials => files.include_default_credentials_file(true),
            }
        } else if path.is_file() {
            files.with_file(kind, path)
        } else {
            files.with_contents(kind, "")
        };
    }
    files.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::meta::region::ProvideRegion;

    #[tokio::test]
    async fn the_profile_files_of_another_home_are_read_without_touching_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[default]\nregion = eu-north-1\n",
        )
        .unwrap();
        // No credentials file there: an empty one, not an error.
        let region = ProfileFileRegionProvider::builder()
            .profile_files(profile_files_in(home.path()))
            .profile_name("default")
            .build()
            .region()
            .await;
        assert_eq!(region.as_ref().map(|r| r.as_ref()), Some("eu-north-1"));
        // A home without ~/.aws at all: no region, no panic.
        let empty = tempfile::tempdir().unwrap();
        let region = ProfileFileRegionProvider::builder()
            .profile_files(profile_files_in(empty.path()))
            .profile_name("default")
            .build()
            .region()
            .await;
        assert_eq!(region, None);
    }
}
