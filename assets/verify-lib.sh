# Shared by the node install script (assets/install.sh) and the kit's installer (assets/kit-install.sh), which
# carry it inlined: checks a trust root against the fingerprint an operator typed and a DSSE envelope against
# a threshold of that root's bundle keys, with openssl and POSIX tools only (docs/install.md). The callers
# set `work` (a private temporary directory) and `root_sha` (the fingerprint) before calling.
MAX_ROOT=262144
say() { printf 'ferry-install: %s\n' "$*" >&2; }
refuse() {
  code=$1
  shift
  printf 'ferry-install: REFUSED %s: %s\n' "$code" "$*" >&2
  exit 1
}
size_of() { wc -c <"$1" | tr -d ' '; }
sha256_of() { sha256sum "$1" | cut -c1-64; }

# strings KEY FILE: every JSON string value of KEY in FILE, one a line (values hold no quote or backslash
# here: base64, hex, names and versions). Whatever this extracts from an unverified document is only ever
# tried as a signature or checked against a signed value.
strings() { tr -d '\r\n' <"$2" | grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"\\\\]*\"" | sed 's/^.*:[[:space:]]*"//; s/"$//' || true; }

# b64 STRING OUT: OUT = the decoded bytes, only if STRING is canonical padded standard base64.
b64() {
  case $1 in *[!A-Za-z0-9+/=]* | '') return 1 ;; esac
  printf %s "$1" | openssl base64 -d -A >"$2" 2>/dev/null || return 1
  [ "$(openssl base64 -A <"$2")" = "$1" ]
}

# hex2bin HEX: the bytes, written with printf octal escapes (no xxd needed).
hex2bin() {
  h=$1
  while [ -n "$h" ]; do
    b=${h%"${h#??}"}
    h=${h#??}
    # shellcheck disable=SC2059 # the format is the escape itself
    printf "\\$(printf %03o "0x$b")"
  done
}


# verify_root FILE: FILE must have the fingerprint root_sha; then keyids, need and $work/root.flat describe
# its bundle role. The root is trusted for its fingerprint: its own self-signature adds nothing here.
verify_root() {
  [ "$(size_of "$1")" -le $MAX_ROOT ] || refuse ROOT_INVALID "the trust root is larger than $MAX_ROOT bytes"
  got=$(sha256_of "$1")
  [ "$got" = "$root_sha" ] ||
    refuse ROOT_MISMATCH "the trust root offered has sha256 $got, not the $root_sha you gave; nothing was installed"
  [ "$(strings payload "$1" | wc -l)" -eq 1 ] || refuse ROOT_INVALID 'root envelope has not exactly one payload'
  b64 "$(strings payload "$1")" "$work/root.payload" || refuse ROOT_INVALID 'root payload is not base64'
  tr -d '\r\n' <"$work/root.payload" >"$work/root.flat"
  role=$(sed -n 's/.*"bundle":{"keyids":\[\([^]]*\)\],"threshold":\([0-9]*\)}.*/\1 \2/p' "$work/root.flat")
  need=${role##* }
  keyids=$(printf %s "${role% *}" | tr -d '"' | tr ',' ' ')
  case $need in '' | *[!0-9]* | 0) refuse ROOT_INVALID 'root has no bundle role this script can read' ;; esac
  expires=$(strings expires "$work/root.flat")
  [ "$expires" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || refuse ROOT_EXPIRED "the trust root expired at $expires"
}

# verify_signed ENVELOPE TYPE OUT WHAT: OUT = the payload, only when a threshold (need) of distinct bundle
# keys (keyids) signed the DSSE pre-authentication encoding of TYPE and those exact bytes. Signatures are
# only tried; one that does not verify, or a key signing twice, counts for nothing.
verify_signed() {
  [ "$(strings payload "$1" | wc -l)" -eq 1 ] || refuse "$4_INVALID" 'envelope has not exactly one payload'
  b64 "$(strings payload "$1")" "$3" || refuse "$4_INVALID" 'payload is not canonical base64'
  printf 'DSSEv1 %d %s %d ' ${#2} "$2" "$(size_of "$3")" >"$work/pae"
  cat "$3" >>"$work/pae"
  strings sig "$1" | head -n 64 >"$work/sigs"
  have=0
  for keyid in $keyids; do
    pub=$(grep -o "\"$keyid\":{\"type\":\"ed25519\",\"public\":\"[0-9a-f]\{64\}\"}" "$work/root.flat" | head -n1 |
      sed 's/.*"public":"//; s/".*//')
    [ -n "$pub" ] || continue
    hex2bin "302a300506032b6570032100$pub" >"$work/pub.der" # Ed25519 SubjectPublicKeyInfo
    while IFS= read -r sig; do
      b64 "$sig" "$work/sig" || continue
      if openssl pkeyutl -verify -pubin -keyform DER -inkey "$work/pub.der" -rawin -in "$work/pae" \
        -sigfile "$work/sig" >/dev/null 2>&1; then
        have=$((have + 1))
        break
      fi
    done <"$work/sigs"
  done
  [ "$have" -ge "$need" ] ||
    refuse "$4_SIGNATURE" "signed by $have bundle key(s) of this root; it needs $need"
}
