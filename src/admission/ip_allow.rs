//! Allow and deny lists of IPv4/IPv6 CIDRs. Deny wins over allow; an empty allow list allows all.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why an address was refused; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListRefusal {
    /// The address is inside a `deny` CIDR.
    Denied,
    /// An `allow` list exists and the address is outside it.
    NotAllowed,
}

impl ListRefusal {
    pub fn label(self) -> &'static str {
        match self {
            ListRefusal::Denied => "deny_list",
            ListRefusal::NotAllowed => "not_allowed",
        }
    }
}

/// One allow/deny pair (global at accept, or per route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpLists {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpLists {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Decides for one (canonical) address. IPv4-mapped IPv6 is compared as IPv4.
    pub fn check(&self, ip: IpAddr) -> Result<(), ListRefusal> {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(ListRefusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err(ListRefusal::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn deny_wins_over_allow() {
        let l = IpLists::new(nets(&["10.0.0.0/8"]), nets(&["10.1.0.0/16"]));
        assert_eq!(l.check("10.2.3.4".parse().unwrap()), Ok(()));
        assert_eq!(
            l.check("10.1.3.4".parse().unwrap()),
            Err(ListRefusal::Denied)
        );
        assert_eq!(
            l.check("192.0.2.1".parse().unwrap()),
            Err(ListRefusal::NotAllowed)
        );
    }

    #[test]
    fn empty_lists_allow_everything() {
        assert_eq!(
            IpLists::default().check("2001:db8::1".parse().unwrap()),
            Ok(())
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
        let l = IpLists::new(vec![], nets(&["192.0.2.0/24"]));
        assert_eq!(
            l.check("::ffff:192.0.2.9".parse().unwrap()),
            Err(ListRefusal::Denied)
        );
    }

    #[test]
    fn ipv6_cidrs() {
        let l = IpLists::new(nets(&["2001:db8:1::/48"]), vec![]);
        assert_eq!(l.check("2001:db8:1:2::3".parse().unwrap()), Ok(()));
        assert_eq!(
            l.check("2001:db8:2::3".parse().unwrap()),
            Err(ListRefusal::NotAllowed)
        );
    }
}
