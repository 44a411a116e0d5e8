//! The local demo, driven through the `tandem` CLI exactly as an operator would: three
//! MariaDB instances with their agents and the conductor; a replica set of one master and
//! two replicas (semi-synchronous); rows written and replicated; a planned switchover; a
//! replica detached; the master's engine killed and the automatic failover that follows;
//! the old master back and rejoined. Run it with `scripts/demo`.

use std::time::{Duration, Instant};

use tandem_e2e::{eventually, Cluster, ClusterOptions};

fn step(text: &str) {
    println!("\n-- {text}");
}

fn show(c: &Cluster, args: &[&str]) {
    println!("$ tandem {}", args.join(" "));
    print!("{}", c.cli_ok(args));
}

fn main() {
    step("starting a RabbitMQ virtual host, three MariaDB instances with their agents, and the conductor");
    // As on VMs with the agent's managed configuration: a server starts read-only.
    // And as a deployment with one least-privilege broker user per agent: each instance
    // is enrolled first (`tandem instance enroll`), which makes its user and its queue.
    let mut options = ClusterOptions::read_only_at_start();
    options.agent_users = true;
    let mut c = Cluster::start_with(3, options);
    for n in &c.nodes {
        println!("   {}: mariadbd on 127.0.0.1:{}", n.name, n.db.port());
    }
    println!("   conductor API on {}", c.conductor.url);
    show(&c, &["status"]);
    step("each agent connected as its own broker user and enrolled itself with its one-time token: only its own key speaks for it");
    show(&c, &["instance", "keys"]);

    step("a replica set: db-1 master, db-2 and db-3 read-only replicas, semi-synchronous");
    show(
        &c,
        &[
            "set",
            "create",
            "shop",
            "--master",
            "db-1",
            "--semi-sync",
            "--wait",
        ],
    );
    show(&c, &["replica", "add", "shop", "db-2", "--wait"]);
    show(&c, &["replica", "add", "shop", "db-3", "--wait"]);
    c.converged("shop");
    for id in 1..=3 {
        c.write_and_see_everywhere("shop", "db-1", id);
    }
    println!("   wrote rows 1-3 on db-1; every member has them");
    show(&c, &["topology"]);

    step("planned switchover to db-2 (no data loss; db-1 becomes its replica)");
    show(&c, &["promote", "shop", "db-2", "--wait"]);
    c.converged("shop");
    c.write_and_see_everywhere("shop", "db-2", 4);
    println!("   wrote row 4 on db-2; every member has it");
    show(&c, &["topology"]);
    let list = c.cli_ok(&["workflow", "list"]);
    let id = list
        .lines()
        .find(|l| l.contains("switchover"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    show(&c, &["workflow", "show", &id]);

    step("detach db-3 into an independent writable server");
    show(&c, &["replica", "detach", "shop", "db-3", "--wait"]);
    c.converged("shop");
    show(&c, &["topology"]);

    step("kill -9 the master's engine: the conductor fails over on its own");
    let master = c.nodes.iter_mut().find(|n| n.name == "db-2").unwrap();
    let killed = Instant::now();
    master.db.kill();
    let new_master = eventually(Duration::from_secs(20), "a failover", || {
        let v = c.set("shop");
        (v.master.as_str() != "db-2").then(|| v.master.to_string())
    });
    println!(
        "   {new_master} is the master {} ms after the kill (db-2's agent reported its engine \
         dead, db-1 confirmed it lost db-2, and had applied everything it received)",
        killed.elapsed().as_millis()
    );
    c.converged_without("shop", "db-2");
    c.write_and_see_everywhere("shop", &new_master, 5);
    println!("   wrote row 5 on {new_master}");
    show(&c, &["topology"]);
    let list = c.cli_ok(&["workflow", "list"]);
    let id = list
        .lines()
        .find(|l| l.contains("failover"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    show(&c, &["workflow", "show", &id]);

    step("db-2 comes back: fenced by the epoch, compared with the new master, rejoined as its replica");
    c.nodes
        .iter_mut()
        .find(|n| n.name == "db-2")
        .unwrap()
        .db
        .restart()
        .unwrap();
    eventually(Duration::from_secs(30), "db-2 to rejoin", || {
        let v = c.set("shop");
        v.member("db-2")
            .is_some_and(|m| m.intended.role == tandem_api::IntendedRole::Replica)
            .then_some(())
    });
    c.converged("shop");
    c.write_and_see_everywhere("shop", &new_master, 6);
    println!("   wrote row 6 on {new_master}; db-2 has it too");
    show(&c, &["topology"]);
    println!("\ndemo finished; everything it started is stopped and removed now");
}
