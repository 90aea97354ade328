mod common;
use common::*;
use runbox_core::JobStatus;

#[test]
fn hello_world_runs_and_reports() {
    let env = Env::new();
    let r = env.sh("echo hello; echo oops >&2; exit 3");
    println!("{}", serde_json_like(&r));
    assert_eq!(r.status, JobStatus::ExitNonzero);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "oops\n");
}

fn serde_json_like(r: &runbox_core::JobResult) -> String {
    format!("{r:#?}")
}
