"""Makes the demo's TLS files once: a private CA and a certificate for the given host names.

  python make_certs.py DIR HOST...   ->  DIR/ca.pem, DIR/tls.crt, DIR/tls.key

Traefik serves tls.crt/tls.key; apps trust ca.pem (OTEL_EXPORTER_OTLP_CERTIFICATE). Existing
files are kept, so restarts do not change the certificate. For the demo only: in production the
certificate comes from your CA or ACME (Let's Encrypt in Traefik, cert-manager in Kubernetes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trustme


def main() -> None:
    out, hosts = Path(sys.argv[1]), sys.argv[2:]
    if not hosts:
        raise SystemExit("usage: make_certs.py DIR HOST...")
    files = [out / name for name in ("ca.pem", "tls.crt", "tls.key")]
    if all(f.is_file() for f in files):
        print(f"keeping the certificate in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="otlp-gateway demo")
    cert = ca.issue_cert(*hosts)
    ca.cert_pem.write_to_path(str(files[0]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(files[1]), append=i > 0)
    cert.private_key_pem.write_to_path(str(files[2]))
    for f in files:
        f.chmod(0o644)  # read by Traefik and the demo apps, which run as other users
    print(f"made a CA and a certificate for {', '.join(hosts)} in {out}")


if __name__ == "__main__":
    main()
