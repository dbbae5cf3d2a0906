//! Build facts for `svc-handler --version` and `svc-handler version`: the
//! commit the binary was built from and the build date (UTC). The date
//! honours `SOURCE_DATE_EPOCH`, for reproducible builds; outside a git
//! checkout the commit is `unknown`.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => output("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"]),
        Err(_) => output("date", &["-u", "+%Y-%m-%d"]),
    }
    .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SVC_HANDLER_COMMIT={commit}");
    println!("cargo:rustc-env=SVC_HANDLER_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit changes HEAD (a detached checkout) or the branch's ref.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Some(head) = std::fs::read_to_string(".git/HEAD")
        .ok()
        .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
    {
        println!("cargo:rerun-if-changed=.git/{head}");
    }
}
