//! What etcd says about its members, typed (`etcdctl member list -w json`): shared by the
//! deploy's scale-in and anything else that reads the member list from the control machine.

use serde_json::Value;

/// One member of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty for a member added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

impl Member {
    /// The ID as etcdctl takes it (`member remove 8e9e05c52164694d`).
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }

    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }

    /// The member of the node called `name` at `address`: by name, or, for a member added and
    /// never started (no name yet), by the address of its peer URL.
    pub fn is_node(&self, name: &str, address: &std::net::IpAddr) -> bool {
        let host = match address {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        self.name == name
            || (self.name.is_empty()
                && self
                    .peer_urls
                    .iter()
                    .any(|url| url.contains(&format!("//{host}:"))))
    }
}

/// The members of a `member list -w json` answer; `None` when it is not one.
pub fn parse_members(text: &str) -> Option<Vec<Member>> {
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    let list = value["members"].as_array()?;
    Some(
        list.iter()
            .filter_map(|member| {
                Some(Member {
                    id: member["ID"].as_u64()?,
                    name: member["name"].as_str().unwrap_or_default().to_string(),
                    peer_urls: member["peerURLs"]
                        .as_array()
                        .map(|urls| {
                            urls.iter()
                                .filter_map(|url| url.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    learner: member["isLearner"].as_bool().unwrap_or(false),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_with_their_ids_in_hex() {
        let text = r#"{"header":{"cluster_id":1,"member_id":2,"raft_term":3},"members":[
            {"ID":10276657743932975437,"name":"node1","peerURLs":["https://10.231.0.11:2380"],"clientURLs":["https://10.231.0.11:2379"]},
            {"ID":5,"peerURLs":["https://10.231.0.14:2380"],"isLearner":true}]}"#;
        let members = parse_members(text).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].hex_id(), "8e9e05c52164694d");
        assert!(members[0].started() && !members[0].learner);
        assert!(!members[1].started() && members[1].learner);
        let node4: std::net::IpAddr = "10.231.0.14".parse().unwrap();
        assert!(
            members[1].is_node("node4", &node4),
            "a learner never started, by its peer URL"
        );
        assert!(!members[0].is_node("node4", &node4));
        assert!(members[0].is_node("node1", &"10.231.0.11".parse().unwrap()));
        assert_eq!(parse_members("Error: context deadline exceeded"), None);
    }
}
