//! The AWS SDK configuration shared by the S3 store and the KMS key service.

use aws_config::BehaviorVersion;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;

/// The SDK's shared configuration (credentials, region, endpoint from its default chain).
/// Without a region anywhere it is `us-east-1`, which S3-compatible servers accept. With an
/// endpoint of our own (an S3- or KMS-compatible server, a VPC endpoint) the region does not
/// come from the EC2 metadata probe of the default chain, which off EC2 costs a timeout on
/// every archive-push.
pub async fn shared_config(endpoint_given: bool) -> aws_config::SdkConfig {
    let region = if endpoint_given {
        RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::builder().build())
            .or_else("us-east-1")
    } else {
        RegionProviderChain::default_provider().or_else("us-east-1")
    };
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}
