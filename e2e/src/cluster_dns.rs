//! A test double for cluster DNS (CoreDNS): no cluster runs here, and the
//! agent's pods bootstrap from a headless Service's name, which kubelet
//! points them at through their resolv.conf. This server answers that name
//! as CoreDNS would for a Service with `publishNotReadyAddresses`: an A
//! record for every pod the harness has running, ready or not. Any other
//! name gets NXDOMAIN, so a pod that asks for something the harness does
//! not serve fails visibly instead of reaching the host's resolver.
//!
//! UDP only: the answers are a few records, far under 512 bytes, which is
//! all glibc's resolver asks over UDP before it would retry on TCP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
use tokio::net::UdpSocket;

/// Where it listens: resolv.conf takes no port, so port 53, on a loopback
/// address of its own (the host network is every pod's network here).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 53);

type Records = Arc<Mutex<BTreeMap<Name, Vec<Ipv4Addr>>>>;

/// A running server; it stops when dropped.
pub struct ClusterDns {
    records: Records,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterDns {
    pub async fn start() -> Result<Self> {
        let addr = SocketAddr::from((ADDRESS, 53));
        // The previous cluster's server closes its socket once its aborted
        // task is dropped, a moment after the cluster ends.
        let mut tries = 0;
        let socket = loop {
            match UdpSocket::bind(addr).await {
                Ok(socket) => break socket,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "the cluster DNS stand-in cannot listen on {addr} (UDP); is another \
                             DNS server bound to port 53 on every address?"
                        )
                    });
                }
            }
        };
        let records = Records::default();
        let task = tokio::spawn(serve(socket, records.clone()));
        Ok(ClusterDns { records, task })
    }

    /// Answers `name` (fully qualified) with `addresses` from now on; an
    /// empty list removes it, as for a Service with no endpoints.
    pub fn set(&self, name: &str, addresses: Vec<Ipv4Addr>) -> Result<()> {
        let name = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
        let mut records = self.records.lock().expect("no panic holds the records");
        if addresses.is_empty() {
            records.remove(&name);
        } else {
            records.insert(name, addresses);
        }
        Ok(())
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, records: Records) {
    let mut buffer = vec![0; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(answer) = answer(&buffer[..len], &records) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

/// The response to one query message; `None` for what is not a query.
fn answer(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.add_queries(query.queries.iter().cloned());
    let records = records.lock().expect("no panic holds the records");
    let mut known = false;
    for question in &query.queries {
        let Some(addresses) = records.get(question.name()) else {
            continue;
        };
        known = true;
        // A name with only A records answers AAAA with no records, not
        // NXDOMAIN, which would also hide its A records.
        if question.query_type() == RecordType::A {
            for address in addresses {
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    5,
                    RData::A(A(*address)),
                ));
            }
        }
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;

    fn ask(records: &Records, name: &str, kind: RecordType) -> Message {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        Message::from_vec(&answer(&query.to_vec().unwrap(), records).unwrap()).unwrap()
    }

    #[test]
    fn a_service_name_answers_with_its_pods_and_nothing_else_resolves() {
        let records = Records::default();
        let name = "reflektor-bootstrap.reflektor.svc.cluster.local.";
        let ips = vec![Ipv4Addr::new(127, 0, 1, 1), Ipv4Addr::new(127, 0, 1, 2)];
        records
            .lock()
            .unwrap()
            .insert(Name::from_ascii(name).unwrap(), ips.clone());
        let found = ask(&records, name, RecordType::A);
        let answered: Vec<_> = found
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect();
        assert_eq!(answered, ips);
        let v6 = ask(&records, name, RecordType::AAAA);
        assert_eq!(v6.metadata.response_code, ResponseCode::NoError);
        assert!(v6.answers.is_empty());
        let other = ask(&records, "example.com.", RecordType::A);
        assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
    }
}
