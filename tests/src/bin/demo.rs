//! The local demo, driven through the `tandem` CLI exactly as an operator would: three
//! MariaDB instances with their agents and the conductor; a replica set of one master and
//! two replicas; rows written and replicated; a planned switchover; a replica detached;
//! the master's engine killed and the death reported. Run it with `scripts/demo`.

use tandem_e2e::Cluster;

fn step(text: &str) {
    println!("\n-- {text}");
}

fn show(c: &Cluster, args: &[&str]) {
    println!("$ tandem {}", args.join(" "));
    print!("{}", c.cli_ok(args));
}

fn main() {
    step("starting a RabbitMQ virtual host, three MariaDB instances with their agents, and the conductor");
    let mut c = Cluster::start(3);
    for n in &c.nodes {
        println!("   {}: mariadbd on 127.0.0.1:{}", n.name, n.db.port());
    }
    println!("   conductor API on {}", c.conductor.url);
    show(&c, &["status"]);

    step("a replica set: db-1 master, db-2 and db-3 read-only replicas");
    show(&c, &["set", "create", "shop", "--master", "db-1", "--wait"]);
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

    step("kill -9 the master's engine: its agent reports it within a probe interval");
    let master = c.nodes.iter_mut().find(|n| n.name == "db-2").unwrap();
    master.db.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    show(&c, &["topology"]);
    println!(
        "   (automatic failover, fencing and rejoin come with issue 7; see README \"Status\")"
    );
    println!("\ndemo finished; everything it started is stopped and removed now");
}
