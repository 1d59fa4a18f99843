//! An IP address with a prefix length, for the VIP and client networks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// `address/prefix`, IPv4 or IPv6. The address is kept as written (a VIP is a host address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn width(address: IpAddr) -> u8 {
        if address.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn mask(self) -> u128 {
        let width = Self::width(self.address);
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - self.prefix)) & (u128::MAX >> (128 - u32::from(width)))
        }
    }

    fn bits(address: IpAddr) -> u128 {
        match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    /// Whether `address` lies in this network.
    pub fn contains(self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4()
            && Self::bits(address) & self.mask() == Self::bits(self.address) & self.mask()
    }

    /// The network itself (host bits cleared).
    pub fn network(self) -> Cidr {
        let bits = Self::bits(self.address) & self.mask();
        let address = match self.address {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Cidr {
            address,
            prefix: self.prefix,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| "the prefix length is missing (`/24`, say)".to_string())?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("`{prefix}` is not a prefix length"))?;
        if prefix > Self::width(address) {
            return Err(format!("prefix /{prefix} is longer than the address"));
        }
        Ok(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_respects_the_prefix() {
        let vip: Cidr = "10.231.0.100/24".parse().unwrap();
        assert!(vip.contains("10.231.0.11".parse().unwrap()));
        assert!(!vip.contains("10.231.1.11".parse().unwrap()));
        assert!(!vip.contains("::1".parse().unwrap()));
        let wide: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(wide.contains("10.200.3.4".parse().unwrap()));
        assert_eq!(vip.network().to_string(), "10.231.0.0/24");
    }

    #[test]
    fn rejects_malformed_text() {
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("nope/24".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert_eq!(
            "fd00::1/64".parse::<Cidr>().unwrap().network().to_string(),
            "fd00::/64"
        );
    }
}
