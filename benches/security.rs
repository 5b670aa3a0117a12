//! Security benchmarks (criterion): the cost of the ACL check every
//! request makes, with 10,000 ACLs (the issue's figure).
//!
//! ```text
//! cargo bench --bench security
//! ```
//!
//! * `authorizer_*`: the compiled [`Authorizer`] alone: a literal match, a
//!   prefixed match, and a miss (the slowest: every lookup comes up empty);
//! * `caller_allows`: what a handler calls: the current view is taken
//!   (a read lock and an `Arc` clone) and checked;
//! * `compile_10k`: rebuilding the view after a change (every broker
//!   does it when an ACL is added or removed).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::security::acl::{
    AclBinding, Authorizer, Operation, PatternType, Permission, ResourceType,
};
use sluice::security::{
    Access, Caller, Principal, SecurityCommand, SecuritySettings, SecurityState,
};

/// 10,000 ACLs: 1,000 users, each with literal read and write on two
/// topics of its own, a prefixed read, a group, and a deny; plus some for
/// everyone.
fn acls() -> Vec<AclBinding> {
    let mut out = Vec::new();
    let b = |p: String, rt, pat, name: String, op, perm| AclBinding {
        principal: p,
        resource_type: rt,
        pattern: pat,
        name,
        operation: op,
        permission: perm,
    };
    for u in 0..1000 {
        let p = format!("User:user-{u}");
        for t in 0..2 {
            for op in [Operation::Read, Operation::Write] {
                out.push(b(
                    p.clone(),
                    ResourceType::Topic,
                    PatternType::Literal,
                    format!("orders-{u}-{t}"),
                    op,
                    Permission::Allow,
                ));
            }
        }
        out.push(b(
            p.clone(),
            ResourceType::Topic,
            PatternType::Prefixed,
            format!("team-{u}-"),
            Operation::Read,
            Permission::Allow,
        ));
        out.push(b(
            p.clone(),
            ResourceType::Group,
            PatternType::Literal,
            format!("group-{u}"),
            Operation::Read,
            Permission::Allow,
        ));
        out.push(b(
            p.clone(),
            ResourceType::Topic,
            PatternType::Literal,
            format!("secret-{u}"),
            Operation::All,
            Permission::Deny,
        ));
        out.push(b(
            p,
            ResourceType::Queue,
            PatternType::Prefixed,
            format!("jobs-{u}"),
            Operation::Read,
            Permission::Allow,
        ));
    }
    for i in 0..4000 - out.len() % 4000 {
        out.push(b(
            "User:*".into(),
            ResourceType::Topic,
            if i % 2 == 0 {
                PatternType::Literal
            } else {
                PatternType::Prefixed
            },
            format!("public-{i}"),
            Operation::Describe,
            Permission::Allow,
        ));
    }
    out.truncate(10_000);
    assert_eq!(out.len(), 10_000);
    out
}

fn bench(c: &mut Criterion) {
    let acls = acls();
    let a = Authorizer::new(&acls, ["User:admin".to_string()]);
    c.bench_function("authorizer_literal_10k", |b| {
        b.iter(|| {
            black_box(a.allows(
                black_box("User:user-500"),
                Operation::Write,
                ResourceType::Topic,
                black_box("orders-500-1"),
            ))
        })
    });
    c.bench_function("authorizer_prefixed_10k", |b| {
        b.iter(|| {
            black_box(a.allows(
                black_box("User:user-500"),
                Operation::Read,
                ResourceType::Topic,
                black_box("team-500-payments-eu-west"),
            ))
        })
    });
    c.bench_function("authorizer_miss_10k", |b| {
        b.iter(|| {
            black_box(a.allows(
                black_box("User:user-500"),
                Operation::Write,
                ResourceType::Topic,
                black_box("somebody-elses-topic-with-a-long-name"),
            ))
        })
    });
    let access = Access::new(SecuritySettings {
        authorization: true,
        super_users: vec!["User:admin".into()],
    });
    let mut state = SecurityState::default();
    state
        .apply(&SecurityCommand::AddAcls { acls: acls.clone() })
        .expect("acls");
    access.update(&state);
    let caller = Caller::checked(Principal::user("user-500"), access.clone());
    c.bench_function("caller_allows_10k", |b| {
        b.iter(|| {
            black_box(caller.allows(
                Operation::Write,
                ResourceType::Topic,
                black_box("orders-500-1"),
            ))
        })
    });
    c.bench_function("compile_10k", |b| {
        b.iter(|| access.update(black_box(&state)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
