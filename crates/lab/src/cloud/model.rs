//! The emulated EC2: a VPC with subnets, security groups, instances and
//! ENIs, and every rule of EC2's that podwire meets — instance-type ENI and
//! address limits, subnet capacity (five reserved addresses per subnet, as in
//! AWS), address uniqueness, attachment rules. Errors carry EC2's own codes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_cloud::LimitsTable;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// An EC2 API error: code, message, HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub status: u16,
}

pub fn api_err(code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        code: code.into(),
        message: message.into(),
        status: 400,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub availability_zone: String,
}

pub use super::sg::{IngressRule, IngressSource, Protocol};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub ingress: BTreeSet<IngressRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EniAttachment {
    pub attachment_id: String,
    pub instance_id: String,
    pub device_index: u32,
    /// While attaching (`lab --attach-delay`): when the link appears in the
    /// instance, in milliseconds since the Unix epoch. `None`: attached.
    #[serde(default)]
    pub ready_at_ms: Option<u64>,
}

impl EniAttachment {
    /// EC2's attachment status: `attaching` until the link is there.
    pub fn status(&self) -> &'static str {
        if self.ready_at_ms.is_some() {
            "attaching"
        } else {
            "attached"
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub subnet_id: String,
    pub description: String,
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub groups: Vec<String>,
    pub source_dest_check: bool,
    pub attachment: Option<EniAttachment>,
    /// Delegated /28 prefixes (prefix delegation); each takes one of the
    /// ENI's address slots.
    #[serde(default)]
    pub prefixes: Vec<Ipv4Net>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Eni {
    /// The ENI's private addresses: the primary and the secondaries.
    pub fn all_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.primary_ip).chain(self.secondary_ips.iter().copied())
    }

    /// Every address the VPC delivers to this ENI: its private addresses
    /// and every address inside its prefixes.
    pub fn owned_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.all_ips().chain(
            self.prefixes
                .iter()
                .flat_map(|p| super::prefix::addresses(*p)),
        )
    }

    /// Address slots in use (the instance type's IPv4-per-ENI limit counts
    /// addresses and prefixes alike).
    pub fn slots(&self) -> u64 {
        count(self.secondary_ips.len())
            .saturating_add(count(self.prefixes.len()))
            .saturating_add(1)
    }

    /// EC2's status of the interface.
    pub fn status(&self) -> &'static str {
        match &self.attachment {
            None => "available",
            Some(_) => "in-use",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// The lab's name for it (`node-1`, `external`).
    pub host: String,
    /// The network namespace that is this instance.
    pub netns: String,
    pub instance_type: String,
    pub subnet_id: String,
}

/// The whole cloud, persisted as JSON in the lab directory.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Cloud {
    pub region: String,
    pub vpc_id: String,
    pub vpc_cidr: Option<Ipv4Net>,
    pub subnets: BTreeMap<String, Subnet>,
    pub groups: BTreeMap<String, SecurityGroup>,
    pub instances: BTreeMap<String, Instance>,
    pub enis: BTreeMap<String, Eni>,
    /// Access key id → secret.
    pub credentials: BTreeMap<String, String>,
    pub next_id: u64,
    /// CreateNetworkInterface's ClientToken → (fingerprint of the request's
    /// other parameters, the ENI it made): a retry gets the same ENI.
    #[serde(default)]
    pub client_tokens: BTreeMap<String, (String, String)>,
}

/// A length as a count of addresses or interfaces (saturating: nothing has
/// more than u64::MAX of them, so a saturated count still compares right).
fn count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

fn hex_id(prefix: &str, n: u64) -> String {
    format!(
        "{prefix}-0{:016x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 4
    )
}

impl Cloud {
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        hex_id(prefix, self.next_id)
    }

    /// Every address of the VPC in use: ENI addresses and prefix contents.
    pub fn used_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.enis
            .values()
            .flat_map(|e| e.owned_ips().collect::<Vec<_>>())
            .collect()
    }

    /// Addresses of a subnet still free (DescribeSubnets'
    /// availableIpAddressCount): usable addresses minus every one in use.
    pub fn available_in_subnet(&self, subnet_id: &str) -> u64 {
        let Some(s) = self.subnets.get(subnet_id) else {
            return 0;
        };
        let used = self.used_ips();
        let usable = 1u64 << (32 - u32::from(s.cidr.prefix_len()));
        let taken = count(used.iter().filter(|ip| s.cidr.contains(*ip)).count());
        usable.saturating_sub(5).saturating_sub(taken)
    }

    /// Addresses of a subnet AWS never hands out: network, .1 (router), .2
    /// (DNS), .3 (reserved) and broadcast.
    pub fn reserved(cidr: &Ipv4Net, ip: Ipv4Addr) -> bool {
        let off = u32::from(ip) - u32::from(cidr.network());
        off <= 3 || ip == cidr.broadcast()
    }

    /// Picks `count` free addresses of a subnet at random (as EC2 does).
    pub fn pick_free(&self, subnet_id: &str, count_wanted: u32) -> Result<Vec<Ipv4Addr>, ApiError> {
        let subnet = self.subnets.get(subnet_id).ok_or_else(|| {
            api_err(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{subnet_id}' does not exist"),
            )
        })?;
        let used = self.used_ips();
        let free: Vec<Ipv4Addr> = subnet
            .cidr
            .hosts()
            .filter(|ip| !Self::reserved(&subnet.cidr, *ip) && !used.contains(ip))
            .collect();
        if count(free.len()) < u64::from(count_wanted) {
            return Err(api_err(
                "InsufficientFreeAddressesInSubnet",
                format!("The specified subnet {subnet_id} ({}) does not have enough free addresses to satisfy the request ({count_wanted} asked, {} free).", subnet.cidr, free.len()),
            ));
        }
        let mut rng = rand::rng();
        let mut pool = free;
        let mut out = Vec::new();
        for _ in 0..count_wanted {
            let i = rng.random_range(0..pool.len());
            out.push(pool.swap_remove(i));
        }
        Ok(out)
    }

    /// Claims a specific address (it must be free and in the subnet).
    pub fn claim(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<(), ApiError> {
        let subnet = self
            .subnets
            .get(subnet_id)
            .ok_or_else(|| api_err("InvalidSubnetID.NotFound", subnet_id.to_string()))?;
        if !subnet.cidr.contains(&ip) || Self::reserved(&subnet.cidr, ip) {
            return Err(api_err(
                "InvalidParameterValue",
                format!("Address {ip} does not fall within the subnet's address range"),
            ));
        }
        if self.used_ips().contains(&ip) {
            return Err(api_err(
                "InvalidIPAddress.InUse",
                format!("Address {ip} is in use."),
            ));
        }
        Ok(())
    }

    pub fn new_mac(&self) -> String {
        let mut rng = rand::rng();
        loop {
            let b: [u8; 5] = rng.random();
            let mac = format!(
                "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4]
            );
            if !self.enis.values().any(|e| e.mac == mac) {
                return mac;
            }
        }
    }

    pub fn eni(&self, id: &str) -> Result<&Eni, ApiError> {
        self.enis.get(id).ok_or_else(|| {
            api_err(
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{id}' does not exist"),
            )
        })
    }

    fn instance_limits(
        &self,
        limits: &LimitsTable,
        instance_id: &str,
    ) -> Result<(u32, u32), ApiError> {
        let inst = self.instances.get(instance_id).ok_or_else(|| {
            api_err(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            )
        })?;
        let l = limits
            .get(&inst.instance_type)
            .ok_or_else(|| api_err("InvalidInstanceType", inst.instance_type.clone()))?;
        Ok((l.max_enis, l.ipv4_per_eni))
    }

    pub fn create_eni(
        &mut self,
        subnet_id: &str,
        description: &str,
        groups: Vec<String>,
        secondary: u32,
        primary: Option<Ipv4Addr>,
    ) -> Result<String, ApiError> {
        for g in &groups {
            if !self.groups.contains_key(g) {
                return Err(api_err(
                    "InvalidGroup.NotFound",
                    format!("The security group '{g}' does not exist"),
                ));
            }
        }
        let primary_ip = match primary {
            Some(ip) => {
                self.claim(subnet_id, ip)?;
                ip
            }
            None => self.pick_free(subnet_id, 1)?[0],
        };
        let mut eni = Eni {
            id: self.new_id("eni"),
            subnet_id: subnet_id.to_string(),
            description: description.to_string(),
            mac: self.new_mac(),
            primary_ip,
            secondary_ips: Vec::new(),
            groups,
            source_dest_check: true,
            attachment: None,
            prefixes: Vec::new(),
            tags: BTreeMap::new(),
        };
        let id = eni.id.clone();
        self.enis.insert(id.clone(), eni.clone());
        if secondary > 0 {
            match self.pick_free(subnet_id, secondary) {
                Ok(ips) => eni.secondary_ips = ips,
                Err(e) => {
                    self.enis.remove(&id);
                    return Err(e);
                }
            }
        }
        self.enis.insert(id.clone(), eni);
        Ok(id)
    }

    pub fn attach(
        &mut self,
        limits: &LimitsTable,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, ApiError> {
        self.attach_after(limits, eni_id, instance_id, device_index, None)
    }

    /// Attaches; with `ready_at_ms` the attachment stays `attaching` (and the
    /// link absent from the instance) until then (EC2 takes seconds).
    pub fn attach_after(
        &mut self,
        limits: &LimitsTable,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        ready_at_ms: Option<u64>,
    ) -> Result<String, ApiError> {
        let (max_enis, ipv4_per_eni) = self.instance_limits(limits, instance_id)?;
        let eni = self.eni(eni_id)?.clone();
        if eni.attachment.is_some() {
            return Err(api_err(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{eni_id}] in use."),
            ));
        }
        let attached = self.instance_enis(instance_id);
        if attached.iter().any(|e| {
            e.attachment
                .as_ref()
                .is_some_and(|a| a.device_index == device_index)
        }) {
            return Err(api_err("InvalidParameterValue", format!("Instance '{instance_id}' already has an interface attached at device index '{device_index}'.")));
        }
        if count(attached.len()) >= u64::from(max_enis) || device_index >= max_enis {
            return Err(api_err(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    self.instances[instance_id].instance_type
                ),
            ));
        }
        if !eni.prefixes.is_empty() {
            self.check_nitro(limits, instance_id)?;
        }
        if eni.slots() > u64::from(ipv4_per_eni) {
            return Err(api_err("PrivateIpAddressLimitExceeded", format!("Number of private addresses on {eni_id} exceeds the limit of {ipv4_per_eni} for this instance type")));
        }
        let inst_subnet = &self.instances[instance_id].subnet_id;
        let az = |s: &str| self.subnets.get(s).map(|x| x.availability_zone.clone());
        if az(inst_subnet) != az(&eni.subnet_id) {
            return Err(api_err(
                "InvalidParameterCombination",
                "The network interface and the instance must be in the same availability zone",
            ));
        }
        let attachment_id = self.new_id("eni-attach");
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.attachment = Some(EniAttachment {
                attachment_id: attachment_id.clone(),
                instance_id: instance_id.to_string(),
                device_index,
                ready_at_ms,
            });
        }
        Ok(attachment_id)
    }

    /// Ends every `attaching` state that is due; true when one ended (the
    /// fabric then has links to make).
    pub fn settle_attachments(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for e in self.enis.values_mut() {
            if let Some(a) = &mut e.attachment {
                if a.ready_at_ms.is_some_and(|t| t <= now_ms) {
                    a.ready_at_ms = None;
                    changed = true;
                }
            }
        }
        changed
    }

    /// The earliest moment an `attaching` attachment becomes `attached`.
    pub fn next_attachment_due(&self) -> Option<u64> {
        self.enis
            .values()
            .filter_map(|e| e.attachment.as_ref().and_then(|a| a.ready_at_ms))
            .min()
    }

    /// DetachNetworkInterface: the ENI becomes `available` again (EC2's
    /// `detaching` passes at once here). The primary ENI stays.
    pub fn detach(&mut self, attachment_id: &str) -> Result<String, ApiError> {
        let eni = self
            .enis
            .values_mut()
            .find(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.attachment_id == attachment_id)
            })
            .ok_or_else(|| {
                api_err(
                    "InvalidAttachmentID.NotFound",
                    format!("The attachment ID '{attachment_id}' does not exist"),
                )
            })?;
        if eni.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(api_err(
                "OperationNotPermitted",
                format!(
                    "The network interface at device index 0 cannot be detached ({}).",
                    eni.id
                ),
            ));
        }
        eni.attachment = None;
        Ok(eni.id.clone())
    }

    /// Prefix delegation is for Nitro instance types only (bare metal runs
    /// on the Nitro system too: the one rule of `supports_prefixes`, which
    /// the planner and the agent use as well).
    fn check_nitro(&self, limits: &LimitsTable, instance_id: &str) -> Result<(), ApiError> {
        let t = self
            .instances
            .get(instance_id)
            .map(|i| i.instance_type.clone())
            .unwrap_or_default();
        match limits.get(&t) {
            Some(l) if l.supports_prefixes() => Ok(()),
            _ => Err(api_err(
                "InvalidParameterCombination",
                format!("IPv4 prefixes are only supported on Nitro instance types, not {t}"),
            )),
        }
    }

    /// AssignPrivateIpAddresses with `Ipv4PrefixCount` (`n`) or
    /// `Ipv4Prefix.N` (`explicit`): /28s of the ENI's subnet, each taking
    /// one address slot. All or nothing.
    pub fn assign_prefixes(
        &mut self,
        limits: &LimitsTable,
        eni_id: &str,
        n: u32,
        explicit: &[Ipv4Net],
    ) -> Result<Vec<Ipv4Net>, ApiError> {
        let eni = self.eni(eni_id)?.clone();
        if let Some(a) = &eni.attachment {
            self.check_nitro(limits, &a.instance_id)?;
            let (_, ipv4_per_eni) = self.instance_limits(limits, &a.instance_id)?;
            let total = eni
                .slots()
                .saturating_add(u64::from(n))
                .saturating_add(count(explicit.len()));
            if total > u64::from(ipv4_per_eni) {
                return Err(api_err(
                    "PrivateIpAddressLimitExceeded",
                    format!("Number of private addresses and prefixes will exceed limit: {eni_id} may hold {ipv4_per_eni} on {}", self.instances[&a.instance_id].instance_type),
                ));
            }
        }
        let subnet = self
            .subnets
            .get(&eni.subnet_id)
            .map(|s| s.cidr)
            .ok_or_else(|| api_err("InvalidSubnetID.NotFound", eni.subnet_id.clone()))?;
        let distinct: BTreeSet<&Ipv4Net> = explicit.iter().collect();
        if distinct.len() != explicit.len() {
            return Err(api_err("InvalidParameterValue", "a prefix is listed twice"));
        }
        let used = self.used_ips();
        let free = |p: &Ipv4Net| super::prefix::addresses(*p).all(|ip| !used.contains(&ip));
        for p in explicit {
            if !free(p) {
                return Err(api_err(
                    "InvalidParameterValue",
                    format!(
                        "The prefix {p} overlaps addresses in use in subnet {}",
                        eni.subnet_id
                    ),
                ));
            }
        }
        let mut pool: Vec<Ipv4Net> = super::prefix::candidates(subnet)
            .into_iter()
            .filter(|p| free(p) && !explicit.contains(p))
            .collect();
        if count(pool.len()) < u64::from(n) {
            return Err(api_err(
                "InsufficientCidrBlocks",
                format!("The specified subnet {} ({subnet}) does not have enough free aligned /28 blocks to satisfy the request ({n} asked, {} free).", eni.subnet_id, pool.len()),
            ));
        }
        let mut new = explicit.to_vec();
        let mut rng = rand::rng();
        for _ in 0..n {
            let i = rng.random_range(0..pool.len());
            new.push(pool.swap_remove(i));
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.prefixes.extend(new.iter().copied());
        }
        Ok(new)
    }

    /// UnassignPrivateIpAddresses with `Ipv4Prefix.N`: all must be the ENI's.
    pub fn unassign_prefixes(
        &mut self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?;
        for p in prefixes {
            if !eni.prefixes.contains(p) {
                return Err(api_err(
                    "InvalidParameterValue",
                    format!("Some of the specified prefixes are not assigned to interface {eni_id}: {p}"),
                ));
            }
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.prefixes.retain(|p| !prefixes.contains(p));
        }
        Ok(())
    }

    pub fn assign(
        &mut self,
        limits: &LimitsTable,
        eni_id: &str,
        n: u32,
        explicit: &[Ipv4Addr],
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        let eni = self.eni(eni_id)?.clone();
        // In u64: a count near u32::MAX must not wrap to a small total.
        let total = eni
            .slots()
            .saturating_add(u64::from(n))
            .saturating_add(count(explicit.len()));
        if let Some(a) = &eni.attachment {
            let (_, ipv4_per_eni) = self.instance_limits(limits, &a.instance_id)?;
            if total > u64::from(ipv4_per_eni) {
                return Err(api_err(
                    "PrivateIpAddressLimitExceeded",
                    format!("Number of private addresses will exceed limit: {eni_id} may hold {ipv4_per_eni} addresses on {}", self.instances[&a.instance_id].instance_type),
                ));
            }
        }
        let distinct: BTreeSet<&Ipv4Addr> = explicit.iter().collect();
        if distinct.len() != explicit.len() {
            return Err(api_err(
                "InvalidParameterValue",
                "an address is listed twice",
            ));
        }
        for ip in explicit {
            self.claim(&eni.subnet_id, *ip)?;
        }
        let mut new = explicit.to_vec();
        if n > 0 {
            new.extend(self.pick_free(&eni.subnet_id, n)?);
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.secondary_ips.extend(new.iter().copied());
        }
        Ok(new)
    }

    pub fn unassign(&mut self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?;
        for ip in ips {
            if !eni.secondary_ips.contains(ip) {
                return Err(api_err("InvalidParameterValue", format!("Some of the specified addresses are not assigned to interface {eni_id}: {ip}")));
            }
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.secondary_ips.retain(|ip| !ips.contains(ip));
        }
        Ok(())
    }

    pub fn delete_eni(&mut self, eni_id: &str) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?;
        if eni.attachment.is_some() {
            return Err(api_err(
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{eni_id}' is currently in use."),
            ));
        }
        self.enis.remove(eni_id);
        Ok(())
    }

    /// Launches an instance with its primary ENI at device 0 (RunInstances).
    pub fn run_instance(
        &mut self,
        limits: &LimitsTable,
        host: &str,
        netns: &str,
        instance_type: &str,
        subnet_id: &str,
        groups: Vec<String>,
    ) -> Result<String, ApiError> {
        if limits.get(instance_type).is_none() {
            return Err(api_err(
                "InvalidParameterValue",
                format!("Invalid value '{instance_type}' for InstanceType."),
            ));
        }
        if !self.subnets.contains_key(subnet_id) {
            return Err(api_err(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{subnet_id}' does not exist"),
            ));
        }
        if self
            .instances
            .values()
            .any(|i| i.host == host || i.netns == netns)
        {
            return Err(api_err(
                "InvalidParameterValue",
                format!("an instance named {host} exists"),
            ));
        }
        let id = self.new_id("i");
        self.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                host: host.into(),
                netns: netns.into(),
                instance_type: instance_type.into(),
                subnet_id: subnet_id.into(),
            },
        );
        let eni = match self.create_eni(
            subnet_id,
            &format!("Primary network interface of {host}"),
            groups,
            0,
            None,
        ) {
            Ok(e) => e,
            Err(e) => {
                self.instances.remove(&id);
                return Err(e);
            }
        };
        self.attach(limits, &eni, &id, 0)?;
        Ok(id)
    }

    /// Terminates an instance: its ENIs are detached and deleted.
    pub fn terminate_instance(&mut self, instance_id: &str) -> Result<(), ApiError> {
        if self.instances.remove(instance_id).is_none() {
            return Err(api_err(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            ));
        }
        self.enis.retain(|_, e| {
            e.attachment
                .as_ref()
                .is_none_or(|a| a.instance_id != instance_id)
        });
        Ok(())
    }

    /// Who owns an address: (ENI, instance).
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<(&Eni, Option<&Instance>)> {
        let eni = self
            .enis
            .values()
            .find(|e| e.owned_ips().any(|a| a == ip))?;
        let inst = eni
            .attachment
            .as_ref()
            .and_then(|a| self.instances.get(&a.instance_id));
        Some((eni, inst))
    }

    /// ENIs attached to an instance, by device index.
    pub fn instance_enis(&self, instance_id: &str) -> Vec<&Eni> {
        let mut v: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == instance_id)
            })
            .collect();
        v.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> (Cloud, LimitsTable) {
        let mut c = Cloud {
            region: "us-east-1".into(),
            ..Default::default()
        };
        c.subnets.insert(
            "subnet-a".into(),
            Subnet {
                id: "subnet-a".into(),
                cidr: "10.0.0.0/28".parse().expect("cidr"),
                availability_zone: "us-east-1a".into(),
            },
        );
        c.groups.insert(
            "sg-1".into(),
            SecurityGroup {
                id: "sg-1".into(),
                name: "n".into(),
                description: String::new(),
                ingress: BTreeSet::new(),
            },
        );
        c.instances.insert(
            "i-1".into(),
            Instance {
                id: "i-1".into(),
                host: "node-1".into(),
                netns: "x".into(),
                instance_type: "t3.micro".into(),
                subnet_id: "subnet-a".into(),
            },
        );
        (c, LimitsTable::builtin().expect("limits"))
    }

    #[test]
    fn enforces_limits_uniqueness_and_subnet_capacity() {
        let (mut c, limits) = cloud();
        // t3.micro: 2 ENIs x 2 addresses. A /28 has 16 - 5 reserved = 11 usable.
        let e0 = c
            .create_eni("subnet-a", "primary", vec!["sg-1".into()], 0, None)
            .expect("eni0");
        c.attach(&limits, &e0, "i-1", 0).expect("attach");
        assert_eq!(
            c.attach(&limits, &e0, "i-1", 1).expect_err("twice").code,
            "InvalidNetworkInterface.InUse"
        );
        c.assign(&limits, &e0, 1, &[]).expect("one secondary");
        assert_eq!(
            c.assign(&limits, &e0, 1, &[]).expect_err("limit").code,
            "PrivateIpAddressLimitExceeded"
        );
        let e1 = c
            .create_eni("subnet-a", "second", vec!["sg-1".into()], 1, None)
            .expect("eni1");
        c.attach(&limits, &e1, "i-1", 1).expect("attach 1");
        let e2 = c
            .create_eni("subnet-a", "third", vec![], 0, None)
            .expect("eni2");
        assert_eq!(
            c.attach(&limits, &e2, "i-1", 2).expect_err("3rd").code,
            "AttachmentLimitExceeded"
        );
        let used = c.enis[&e0].primary_ip;
        assert_eq!(
            c.claim("subnet-a", used).expect_err("dup").code,
            "InvalidIPAddress.InUse"
        );
        // 5 used so far; 6 more fit, the 7th does not.
        c.create_eni("subnet-a", "fill", vec![], 5, None)
            .expect("fill");
        assert_eq!(
            c.create_eni("subnet-a", "over", vec![], 0, None)
                .expect_err("full")
                .code,
            "InsufficientFreeAddressesInSubnet"
        );
        let all: Vec<Ipv4Addr> = c
            .enis
            .values()
            .flat_map(|e| e.all_ips().collect::<Vec<_>>())
            .collect();
        let uniq: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), uniq.len());
        assert!(all
            .iter()
            .all(|ip| u32::from(*ip) & 0xf > 3 && u32::from(*ip) & 0xf != 15));
        assert_eq!(
            c.delete_eni(&e1).expect_err("attached").code,
            "InvalidNetworkInterface.InUse"
        );
    }

    #[test]
    fn huge_address_counts_hit_the_limit_instead_of_wrapping() {
        let (mut c, limits) = cloud();
        let e0 = c
            .create_eni("subnet-a", "primary", vec![], 0, None)
            .expect("eni0");
        c.attach(&limits, &e0, "i-1", 0).expect("attach");
        // 1 + 4294967286 + 10 wraps to 1 in u32 arithmetic.
        for n in [4_294_967_286u32, u32::MAX] {
            assert_eq!(
                c.assign(&limits, &e0, n, &[]).expect_err("wrap").code,
                "PrivateIpAddressLimitExceeded",
                "count {n}"
            );
        }
        assert!(c.enis[&e0].secondary_ips.is_empty(), "nothing assigned");
        assert_eq!(
            c.create_eni("subnet-a", "big", vec![], u32::MAX, None)
                .expect_err("huge")
                .code,
            "InsufficientFreeAddressesInSubnet"
        );
    }
}
