//! `braid bench-net`: what braid's network stack costs against a raw TCP copy.
//!
//! Runs FedAvg rounds between a server and `nodes - 1` clients over real loopback sockets
//! (libp2p: TCP, Noise, yamux; braid's frames, acknowledgements and strict decoding), with a
//! trainer that returns the model unchanged, so a round's time is its communication: the
//! server sends the model to every client, each sends it back, the server averages. Then it
//! moves the same bytes in the same pattern over plain `std::net` TCP sockets (one thread per
//! connection, length-prefixed, no encryption) and prints the per-round times, the transfer
//! rates and their ratio. Every node runs in this process on its own threads; the two stacks
//! alternate `repeat` times in one sitting, as this machine is noisy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_engine::algorithms::fedavg::FedProtocol;
use braid_engine::algorithms::fedavg::Msg;
use braid_engine::algorithms::fedavg::{FedAvgClient, FedAvgServer, ServerConfig};
use braid_engine::config::{NetworkConfig, Participant};
use braid_engine::node::{BoxNode, EngineResult};
use braid_engine::trainer::{Evaluate, Train, TrainSteps, Trainer};
use braid_engine::wire::{Body, Limits, Tensor};
use braid_engine::wire_node::{WireEvent, WireNode, Wired};
use braid_net::roster::Roster;
use braid_net::runtime::{self, RuntimeOptions};
use braid_nn::train::{EvalOutcome, OptimizerState, TrainOutcome};
use clap::Args;

/// Options of `braid bench-net`.
#[derive(Args, Debug)]
pub struct BenchNetArgs {
    /// Model size in parameters (f32).
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Nodes: one server and `nodes - 1` clients.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Rounds per measurement (the first, which includes connecting, is not timed).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Measurements of each stack, alternating.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
}

/// A trainer that trains nothing: the round is all communication.
struct Echo;

impl Trainer for Echo {}

impl Train for Echo {
    fn train(&mut self, params: &[f32], _: &[usize], _: u64, _: f64) -> EngineResult<TrainOutcome> {
        Ok(TrainOutcome {
            params: params.to_vec(),
            samples: 1,
            steps: 1,
            mean_loss: 0.0,
        })
    }
}

impl TrainSteps for Echo {
    fn train_batches(
        &mut self, params: &[f32], _: &[Vec<usize>], _: &mut OptimizerState, _: f64,
    ) -> EngineResult<TrainOutcome> {
        self.train(params, &[], 0, 1.0)
    }
}

impl Evaluate for Echo {
    fn evaluate(&mut self, _: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: 0.0,
            loss: 0.0,
            samples: 0,
        })
    }

    fn evaluate_sample(&mut self, p: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(p)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the bench and prints the table.
pub fn run(args: BenchNetArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2 (a server and a client)");
    }
    if args.rounds < 2 {
        bail!("--rounds must be at least 2 (the first round is not timed)");
    }
    if args.params == 0 {
        bail!("--params must be at least 1");
    }
    let clients = args.nodes - 1;
    let down = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::exact(vec![0.0; args.params]),
    })
    .encoded_len();
    let up = Body::Msg(Msg::Reply {
        round: 1,
        num_samples: 1,
        steps: 1,
        train_loss: 0.0,
        update: Tensor::exact(vec![0.0; args.params]),
    })
    .encoded_len();
    let per_round = (clients * (down + up)) as f64;
    println!(
        "braid bench-net: {} nodes (a server and {clients} clients) on 127.0.0.1 | {} parameters | {:.2} MB down + {:.2} MB up per client per round | {} rounds x {} repeats",
        args.nodes,
        args.params,
        down as f64 / 1e6,
        up as f64 / 1e6,
        args.rounds,
        args.repeat
    );
    let (mut braid_times, mut raw_times) = (Vec::new(), Vec::new());
    for r in 0..args.repeat {
        let b = braid_rounds(&args)?;
        let t = raw_rounds(clients, down, up, args.rounds)?;
        println!(
            "  repeat {}: braid {:.1} ms/round, raw TCP {:.1} ms/round (medians of rounds 2..{})",
            r + 1,
            median(b.clone()) * 1e3,
            median(t.clone()) * 1e3,
            args.rounds
        );
        braid_times.extend(b);
        raw_times.extend(t);
    }
    let (b, t) = (median(braid_times), median(raw_times));
    println!(
        "{:<34} {:>14} {:>14} {:>12}",
        "stack", "ms per round", "MB per round", "MB/s"
    );
    for (name, secs) in [
        ("braid (libp2p TCP+Noise+yamux)", b),
        ("raw TCP copy (std::net)", t),
    ] {
        println!(
            "{:<34} {:>14.1} {:>14.2} {:>12.1}",
            name,
            secs * 1e3,
            per_round / 1e6,
            per_round / secs / 1e6
        );
    }
    println!(
        "ratio braid / raw TCP: {:.2}x the time per round ({:.0}% of the raw transfer rate)",
        b / t,
        100.0 * t / b
    );
    Ok(())
}

/// Seconds per round of FedAvg over braid's network runtime, rounds 2.. (round 1 connects).
fn braid_rounds(args: &BenchNetArgs) -> Result<Vec<f64>> {
    let total = args.nodes;
    let keys: Vec<_> = (0..total)
        .map(|_| braid_net::identity::generate())
        .collect();
    let ports = super::launch::free_ports(total)?;
    let network = NetworkConfig {
        participants: (0..total)
            .map(|i| Participant {
                node: i as u32,
                peer_id: braid_net::identity::peer_id(&keys[i]).to_string(),
                addr: Some(format!("/ip4/127.0.0.1/tcp/{}", ports[i])),
            })
            .collect(),
        ..NetworkConfig::default()
    };
    let roster = Roster::from_config(&network)?;
    let clients: Vec<u32> = (1..total as u32).collect();
    let server = FedAvgServer::new(
        ServerConfig {
            rounds: args.rounds,
            clients_per_round: clients.len(),
            eval_every: args.rounds,
            server_optimizer: Default::default(),
            seed: 1,
            round_deadline: None,
            min_replies: 1,
            aggregator: Default::default(),
        },
        clients.clone(),
        vec![0.5; args.params],
    )?;
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![Box::new(server)];
    for &c in &clients {
        nodes.push(Box::new(FedAvgClient::new(c, Arc::new(vec![0]), 1)));
    }
    let limits = Limits::new(args.params);
    let nodes: Vec<Box<dyn WireNode>> = nodes
        .into_iter()
        .map(|n| Box::new(Wired::new(n, Box::new(Echo), limits)) as Box<dyn WireNode>)
        .collect();
    let mut handles = Vec::new();
    for (i, (node, key)) in nodes.into_iter().zip(keys).enumerate() {
        let options = RuntimeOptions {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{}", ports[i]).parse()?],
            max_message_bytes: 1 << 40,
            request_timeout: Duration::from_secs(120),
            retry_for: Duration::from_secs(60),
            checkpoint: None,
            resume: false,
            run_log: None,
            run_id: None,
            idle_timeout: None,
            keep_sent: None,
            keep_states: None,
            governance: None,
        };
        let roster = roster.clone();
        handles.push(std::thread::spawn(move || {
            runtime::run(
                node,
                key,
                roster,
                options,
                Box::new(|_: &WireEvent| {}),
                Box::new(|_: &braid_net::Multiaddr| {}),
            )
        }));
    }
    let mut server_report = None;
    for (i, h) in handles.into_iter().enumerate() {
        let report = h
            .join()
            .map_err(|_| anyhow::anyhow!("node {i} panicked"))?
            .with_context(|| format!("node {i} failed"))?;
        if i == 0 {
            server_report = Some(report);
        }
    }
    let walls: Vec<f64> = server_report
        .map(|r| {
            r.events
                .iter()
                .filter(|(e, _)| matches!(e, WireEvent::Metrics { .. }))
                .map(|(_, w)| *w)
                .collect()
        })
        .unwrap_or_default();
    if walls.len() != args.rounds as usize {
        bail!(
            "the server reported {} of {} rounds",
            walls.len(),
            args.rounds
        );
    }
    Ok(walls.windows(2).map(|w| w[1] - w[0]).collect())
}

/// Seconds per round of the same traffic over plain TCP: per round, the server writes `down`
/// bytes to every client at once (a thread per connection), each client writes `up` bytes
/// back once it has read them all. Rounds 2.. (as for braid).
fn raw_rounds(clients: usize, down: usize, up: usize, rounds: u32) -> Result<Vec<f64>> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let client_threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let reply = vec![7u8; up];
                let mut buf = Vec::new();
                for _ in 0..rounds {
                    read_frame(&mut s, &mut buf)?;
                    write_frame(&mut s, &reply)?;
                }
                Ok(())
            })
        })
        .collect();
    let model = Arc::new(vec![3u8; down]);
    // Every connection thread, plus this one, meets at each round's start and end.
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut server_threads = Vec::new();
    for _ in 0..clients {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let (model, barrier) = (Arc::clone(&model), Arc::clone(&barrier));
        server_threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = Vec::new();
            for _ in 0..rounds {
                barrier.wait();
                write_frame(&mut s, &model)?;
                read_frame(&mut s, &mut buf)?;
                barrier.wait();
            }
            Ok(())
        }));
    }
    let mut times = Vec::new();
    for r in 0..rounds {
        barrier.wait();
        let t0 = Instant::now();
        barrier.wait();
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    for t in server_threads.into_iter().chain(client_threads) {
        t.join()
            .map_err(|_| anyhow::anyhow!("a raw TCP thread panicked"))?
            .context("raw TCP copy failed")?;
    }
    Ok(times)
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = usize::try_from(u64::from_le_bytes(len))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    buf.resize(n, 0);
    s.read_exact(buf)
}
