//! What the output-buffering tests' writer (a busybox loop printing numbered lines and, at its end,
//! `maxstall <µs> lines <n>`) wrote, checked line by line.

/// (longest write in µs, lines read, problems: lines missing, repeated or out of order).
pub fn check(out: &str) -> (u64, u64, Vec<String>) {
    let mut problems = Vec::new();
    let mut expect = 0u64;
    let mut summary = None;
    for l in out.lines() {
        let mut w = l.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("line"), Some(n), _) => {
                let n: u64 = n.parse().unwrap_or(u64::MAX);
                if n != expect {
                    problems.push(format!("line {n} where {expect} was expected"));
                }
                expect = n.saturating_add(1);
            }
            (Some("maxstall"), Some(us), Some("lines")) => {
                summary = Some((us.parse().unwrap_or(u64::MAX), w.next().and_then(|n| n.parse().ok())));
            }
            _ => problems.push(format!("unexpected line {:?}", &l[..l.len().min(80)])),
        }
    }
    let (stall, lines) = summary.unwrap_or((u64::MAX, None));
    if lines != Some(expect) {
        problems.push(format!("{expect} lines read, the writer says {lines:?}"));
    }
    problems.truncate(10);
    (stall, expect, problems)
}
