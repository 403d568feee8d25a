#!/usr/bin/env bash
# Regenerates every test certificate in this folder with openssl.
# Good certificates are valid for 100 years; the failing cases are made on purpose.
#
#   ca.pem / ca.key          the test CA that signs servers and clients
#   server.pem / server.key  CN=localhost, SAN localhost, 127.0.0.1, ::1, EKU serverAuth
#   client-<cn>.pem/.key     clients with EKU clientAuth, one per CommonName
#   other-ca.*               an unrelated CA
#   bad-untrusted.*          CN=sso-server signed by other-ca
#   bad-expired.*            CN=sso-server, validity ended in 2001
#   bad-notyet.*             CN=sso-server, validity starts in 2099
#   bad-server-eku.*         CN=sso-server, EKU serverAuth only
#   bad-no-cn.*              no CommonName at all
#   bad-two-cn.*             two CommonNames
#   bad-self-signed.*        CN=admin, self-signed (a trusted name without the CA)
set -euo pipefail
cd "$(dirname "$0")"
rm -f ./*.pem ./*.key ./*.srl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

mkca() { # name subject
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "$2" -days 36500 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
}

# sign NAME SUBJECT EXTENSIONS [CA] [STARTDATE ENDDATE]
sign() {
  local name=$1 subj=$2 ext=$3 ca=${4:-ca} start=${5:-} end=${6:-}
  key "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -out "$work/$name.csr"
  printf '%s\n' "$ext" > "$work/$name.ext"
  mkdir -p "$work/db-$name"
  : > "$work/db-$name/index.txt"
  cat > "$work/$name.cnf" <<CNF
[ca]
default_ca = d
[d]
database = $work/db-$name/index.txt
new_certs_dir = $work/db-$name
serial = $work/db-$name/serial
default_md = sha256
policy = p
unique_subject = no
copy_extensions = none
[p]
commonName = optional
organizationName = optional
CNF
  openssl rand -hex 16 > "$work/db-$name/serial"
  local dates=(-days 36500)
  if [ -n "$start" ]; then dates=(-startdate "$start" -enddate "$end"); fi
  openssl ca -batch -config "$work/$name.cnf" -cert "$ca.pem" -keyfile "$ca.key" \
    -in "$work/$name.csr" -out "$name.pem" -notext -preserveDN \
    -extfile "$work/$name.ext" "${dates[@]}" 2>/dev/null
}

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

mkca ca "/O=usermetadb test/CN=usermetadb test CA"
mkca other-ca "/O=someone else/CN=unrelated CA"

sign server "/O=usermetadb test/CN=localhost" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

for cn in sso-server auth-server accounts-panel prometheus admin sso-server.evil xauth-server acme-admin; do
  sign "client-$cn" "/O=usermetadb test/CN=$cn" "$client_ext"
done

sign bad-untrusted "/O=usermetadb test/CN=sso-server" "$client_ext" other-ca
sign bad-expired "/O=usermetadb test/CN=sso-server" "$client_ext" ca 20000101000000Z 20010101000000Z
sign bad-notyet "/O=usermetadb test/CN=sso-server" "$client_ext" ca 20990101000000Z 21000101000000Z
sign bad-server-eku "/O=usermetadb test/CN=sso-server" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
sign bad-no-cn "/O=usermetadb test/OU=no common name" "$client_ext"
sign bad-two-cn "/O=usermetadb test/CN=sso-server/CN=accounts-panel" "$client_ext"
key bad-self-signed.key
openssl req -x509 -new -key bad-self-signed.key -subj "/O=usermetadb test/CN=admin" -days 36500 -sha256 \
  -addext "basicConstraints=CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=clientAuth" -out bad-self-signed.pem

# The server reads PKCS#8 or SEC1 keys; keep PKCS#8 everywhere.
for k in ./*.key; do openssl pkey -in "$k" -out "$k.tmp" && mv "$k.tmp" "$k"; done
rm -f other-ca.key
echo "certificates written to $(pwd)"
