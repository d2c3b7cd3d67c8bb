//! Heavy clients stay behind their features: `cargo add leasehold` (default
//! features) compiles none of them, and a Redis user does not compile the AWS
//! SDK or the etcd client.

use std::process::Command;

fn normal_dependencies(features: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO"));
    command.args([
        "tree",
        "--locked",
        "-p",
        "leasehold",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    if !features.is_empty() {
        command.args(["--no-default-features", "--features", &features.join(",")]);
    }
    let output = command.output().expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_absent(tree: &str, crates: &[&str], what: &str) {
    for name in crates {
        assert!(
            !tree
                .lines()
                .any(|line| line.starts_with(&format!("{name} "))),
            "{what} pulls in {name}:\n{tree}"
        );
    }
}

#[test]
fn default_features_compile_no_store_client() {
    let tree = normal_dependencies(&[]);
    assert_absent(
        &tree,
        &[
            "etcd-client",
            "aws-sdk-dynamodb",
            "aws-config",
            "zookeeper-client",
            "sqlx",
            "redis",
        ],
        "leasehold with default features",
    );
}

#[test]
fn every_feature_but_dynamodb_compiles_no_aws_sdk() {
    let tree = normal_dependencies(&["redis", "redlock", "etcd", "zookeeper", "postgres"]);
    assert_absent(
        &tree,
        &["aws-sdk-dynamodb", "aws-config", "aws-smithy-runtime"],
        "leasehold without dynamodb",
    );
    assert!(
        tree.lines().any(|l| l.starts_with("etcd-client ")),
        "the etcd feature should pull etcd-client"
    );
}

#[test]
fn the_redis_feature_compiles_neither_etcd_nor_aws() {
    let tree = normal_dependencies(&["redis"]);
    assert_absent(
        &tree,
        &[
            "etcd-client",
            "aws-sdk-dynamodb",
            "zookeeper-client",
            "sqlx",
            "prost",
        ],
        "leasehold[redis]",
    );
}
