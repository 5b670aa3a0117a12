//! `sluice cert`: a private CA and the certificates a secured deployment
//! needs (brokers' server and internal certificates, clients'
//! certificates), without openssl. For production, certificates from the
//! organisation's own CA (or cert-manager) work the same way.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::client::ClientError;

/// Certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a CA: DIR/ca.crt and DIR/ca.key (the key readable by its
    /// owner only).
    CreateCa {
        /// Where the files go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Sluice CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Create a certificate signed by DIR's CA: DIR/NAME.crt and
    /// DIR/NAME.key. Its common name is NAME (the principal User:NAME when
    /// a client presents it); it is valid for TLS servers and clients.
    Create {
        /// The directory holding ca.crt and ca.key; the new files go there.
        #[arg(long)]
        dir: PathBuf,
        /// Common name, and the files' name.
        #[arg(long)]
        name: String,
        /// Host names and addresses it is valid for (repeat; `*.x` works).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ClientError {
    ClientError::Address(what.to_string(), e.to_string())
}

fn write(path: &Path, content: &str, private: bool) -> Result<(), ClientError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| fail(path.display(), e))?;
    f.write_all(content.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| fail(path.display(), e))
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days.max(1));
}

/// Runs a `sluice cert` command.
pub fn cert(cmd: CertCommand) -> Result<(), ClientError> {
    match cmd {
        CertCommand::CreateCa { dir, name, days } => {
            std::fs::create_dir_all(&dir).map_err(|e| fail(dir.display(), e))?;
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut p, days);
            let key = KeyPair::generate().map_err(|e| fail("key", e))?;
            let cert = p.self_signed(&key).map_err(|e| fail("CA", e))?;
            write(&dir.join("ca.crt"), &cert.pem(), false)?;
            write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
            println!("{}", dir.join("ca.crt").display());
        }
        CertCommand::Create {
            dir,
            name,
            hosts,
            days,
        } => {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).map_err(|e| fail(dir.join(f).display(), e))
            };
            let ca_key = KeyPair::from_pem(&read("ca.key")?).map_err(|e| fail("ca.key", e))?;
            let issuer = Issuer::from_ca_cert_pem(&read("ca.crt")?, ca_key)
                .map_err(|e| fail("ca.crt", e))?;
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&name, e))?;
            p.distinguished_name.push(DnType::CommonName, name.clone());
            for h in &hosts {
                let san = match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into().map_err(|e| fail(h, e))?),
                };
                p.subject_alt_names.push(san);
            }
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut p, days);
            let key = KeyPair::generate().map_err(|e| fail("key", e))?;
            let cert = p.signed_by(&key, &issuer).map_err(|e| fail(&name, e))?;
            write(&dir.join(format!("{name}.crt")), &cert.pem(), false)?;
            write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
            println!("{}", dir.join(format!("{name}.crt")).display());
        }
    }
    Ok(())
}
