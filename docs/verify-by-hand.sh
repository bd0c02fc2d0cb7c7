#!/usr/bin/env bash
# Verifies a ferry bundle with standard tools only (tar, jq, base64, xxd, openssl,
# sha256sum) and the trust root file: no ferry code is involved. It is the
# procedure of docs/auditor-guide.md, runnable. It does not walk root rotations:
# pass the root the bundle was signed under (after checking that root by hand).
#
# usage: verify-by-hand.sh BUNDLE.ferry root.json [SITE]
set -euo pipefail
bundle=$1 root=$2 site=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "REFUSED: $*" >&2; exit 1; }

# 1. The container: a plain tar of regular files; manifest first, then roots, then blobs.
tar -tvf "$bundle" >"$work/listing" || fail "not a readable tar archive"
awk '{print substr($1,1,1)}' "$work/listing" | grep -qv '^-$' && fail "archive holds something other than regular files"
tar -tf "$bundle" >"$work/names"
[ "$(head -n1 "$work/names")" = manifest.dsse.json ] || fail "first entry is not manifest.dsse.json"
grep -Evx 'manifest\.dsse\.json|root/[1-9][0-9]*\.root\.json|blobs/sha256/[0-9a-f]{64}' "$work/names" && fail "unexpected entry names above"
[ "$(sort "$work/names" | uniq -d | wc -l)" -eq 0 ] || fail "duplicate entries"
mkdir "$work/x" && tar -xf "$bundle" -C "$work/x" --no-same-owner --no-same-permissions

# DSSE PAE of (type, payload file) into $3
pae() { printf 'DSSEv1 %d %s %d ' "$(printf %s "$1" | wc -c)" "$1" "$(stat -c %s "$2")" >"$3"; cat "$2" >>"$3"; }

# Count distinct keys of ROLE in ROOT_PAYLOAD that signed ENVELOPE (with TYPE).
count_signers() {
  local env=$1 type=$2 rootp=$3 role=$4 n=0
  [ "$(jq -r .payloadType "$env")" = "$type" ] || fail "payloadType of $env is not $type"
  jq -r .payload "$env" | base64 -d >"$work/body" || fail "payload of $env is not base64"
  pae "$type" "$work/body" "$work/pae"
  for keyid in $(jq -r ".roles.$role.keyids[]" "$rootp"); do
    # Ed25519 SubjectPublicKeyInfo = fixed 12-byte DER prefix + the 32-byte key
    { printf '302a300506032b6570032100'; jq -r ".keys[\"$keyid\"].public" "$rootp"; } | xxd -r -p >"$work/pub.der"
    for i in $(seq 0 $(($(jq '.signatures | length' "$env") - 1))); do
      jq -r ".signatures[$i].sig" "$env" | base64 -d >"$work/sig" 2>/dev/null || continue
      if openssl pkeyutl -verify -pubin -keyform DER -inkey "$work/pub.der" -rawin -in "$work/pae" -sigfile "$work/sig" >/dev/null 2>&1; then
        n=$((n + 1)); break
      fi
    done
  done
  echo "$n"
}

# 2. The root: signed by a threshold of its own root keys.
jq -r .payload "$root" | base64 -d >"$work/root.payload"
have=$(count_signers "$root" application/vnd.ferry.root+json "$work/root.payload" root)
need=$(jq .roles.root.threshold "$work/root.payload")
[ "$have" -ge "$need" ] || fail "root is signed by $have root key(s), needs $need"
[ "$(jq -r .expires "$work/root.payload")" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || fail "root expired"

# 3. The manifest: signed by a threshold of the root's bundle keys, unexpired, for this site.
env=$work/x/manifest.dsse.json
have=$(count_signers "$env" application/vnd.ferry.manifest+json "$work/root.payload" bundle)
need=$(jq .roles.bundle.threshold "$work/root.payload")
[ "$have" -ge "$need" ] || fail "manifest is signed by $have bundle key(s), needs $need"
jq -r .payload "$env" | base64 -d >"$work/manifest.json"
[ "$(jq -r .expires "$work/manifest.json")" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || fail "manifest expired"
if [ -n "$site" ]; then
  jq -e --arg s "$site" '.sites | index($s) or index("*")' "$work/manifest.json" >/dev/null || fail "not for site $site"
fi

# 4. Every blob present is named by the manifest, with its size and digest.
for f in "$work"/x/blobs/sha256/*; do
  [ -e "$f" ] || continue
  d=$(basename "$f")
  size=$(jq --arg d "$d" '[.artifacts[] | select(.sha256 == $d) | .size][0] // empty' "$work/manifest.json")
  [ -n "$size" ] || fail "blob $d is not in the manifest"
  [ "$(stat -c %s "$f")" -eq "$size" ] || fail "blob $d has the wrong size"
  [ "$(sha256sum "$f" | cut -c1-64)" = "$d" ] || fail "blob $d does not match its digest"
done

jq -r '"publisher \(.publisher) sequence \(.sequence), expires \(.expires)"' "$work/manifest.json"
echo "OK: $have of $need bundle signature(s) verified; all blobs present match the manifest"
