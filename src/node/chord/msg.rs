//! The ring's messages on the wire, as types of their own: the pure core's
//! `ring::Peer` and `ring::Route` carry no serde, so changing the core never
//! changes the protocol by accident. Fields of the message structs name
//! these modules with `#[serde(with = ...)]`; `docs/protocol.md` gives the
//! JSON shapes.

use super::{Ep, RPeer};
use crate::id::NodeId;
use crate::ring;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A ring member on the wire: `{"id": u64, "addr": {"at": ..., "key": ...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WirePeer {
    id: NodeId,
    addr: Ep,
}

impl From<&RPeer> for WirePeer {
    fn from(p: &RPeer) -> WirePeer {
        WirePeer {
            id: p.id,
            addr: p.addr,
        }
    }
}

impl From<WirePeer> for RPeer {
    fn from(p: WirePeer) -> RPeer {
        ring::Peer::new(p.id, p.addr)
    }
}

/// An answer to `next_hop` on the wire:
/// `{"Done": Peer} | {"Next": {"peer": Peer, "fallbacks": [Peer]}}`.
#[derive(Serialize, Deserialize)]
enum WireRoute {
    Done(WirePeer),
    Next {
        peer: WirePeer,
        fallbacks: Vec<WirePeer>,
    },
}

/// `#[serde(with = "peer")]` for an `RPeer` field.
pub(crate) mod peer {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(p: &RPeer, s: S) -> Result<S::Ok, S::Error> {
        WirePeer::from(p).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RPeer, D::Error> {
        WirePeer::deserialize(d).map(Into::into)
    }
}

/// `#[serde(with = "opt_peer")]` for an `Option<RPeer>` field.
pub(crate) mod opt_peer {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(p: &Option<RPeer>, s: S) -> Result<S::Ok, S::Error> {
        p.as_ref().map(WirePeer::from).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RPeer>, D::Error> {
        Ok(Option::<WirePeer>::deserialize(d)?.map(Into::into))
    }
}

/// `#[serde(with = "peers")]` for a `Vec<RPeer>` field.
pub(crate) mod peers {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[RPeer], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(WirePeer::from)
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RPeer>, D::Error> {
        Ok(Vec::<WirePeer>::deserialize(d)?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// `#[serde(with = "route")]` for a `ring::Route<Ep>` field.
pub(crate) mod route {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(r: &ring::Route<Ep>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            ring::Route::Done(p) => WireRoute::Done(p.into()),
            ring::Route::Next { peer, fallbacks } => WireRoute::Next {
                peer: peer.into(),
                fallbacks: fallbacks.iter().map(WirePeer::from).collect(),
            },
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ring::Route<Ep>, D::Error> {
        Ok(match WireRoute::deserialize(d)? {
            WireRoute::Done(p) => ring::Route::Done(p.into()),
            WireRoute::Next { peer, fallbacks } => ring::Route::Next {
                peer: peer.into(),
                fallbacks: fallbacks.into_iter().map(Into::into).collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "route")]
        route: ring::Route<Ep>,
        #[serde(with = "opt_peer")]
        pred: Option<RPeer>,
    }

    #[test]
    fn the_json_shapes_of_docs_protocol() {
        let ep = Ep {
            at: "127.0.0.1:4444".parse().expect("addr"),
            key: None,
        };
        let p = ring::Peer::new(NodeId(3), ep);
        let v = serde_json::to_value(Sample {
            route: ring::Route::Next {
                peer: p.clone(),
                fallbacks: vec![p.clone()],
            },
            pred: None,
        })
        .expect("json");
        let peer = json!({"id": 3, "addr": {"at": "127.0.0.1:4444"}});
        assert_eq!(
            v,
            json!({"route": {"Next": {"peer": peer, "fallbacks": [peer]}}, "pred": null})
        );
        let back: Sample = serde_json::from_value(v).expect("parse");
        assert_eq!(
            back.route,
            ring::Route::Next {
                peer: p.clone(),
                fallbacks: vec![p]
            }
        );
        assert!(back.pred.is_none());
    }
}
