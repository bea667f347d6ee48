#!/usr/bin/env bash
# Refreshes the dashboard's vendored front-end files in keyvault-admin/static/vendor/ from the
# npm packages of Bootstrap and Chart.js, pinned to exact versions below. The server embeds
# these files in its binary (keyvault-admin/src/assets.rs): nothing loads from a CDN and
# nothing downloads at build time, so this script is the only thing that touches the network,
# and it runs by hand, its output committed.
#
#   scripts/vendor-assets.sh
#
# Only the files the dashboard serves are kept: Bootstrap's minified CSS and its bundle (with
# Popper), Chart.js's minified UMD build, and both licences. Their trailing
# `sourceMappingURL` comments are removed: we do not ship the maps, and a comment naming a
# missing file makes every browser with developer tools open ask for it (a 404 per file).
# VERSIONS.md records versions, licences and the SHA-256 of each file as written here.
set -euo pipefail
cd "$(dirname "$0")/.."

BOOTSTRAP_VERSION=5.3.9
CHARTJS_VERSION=4.6.2

command -v npm >/dev/null || { echo "vendor-assets: npm is missing" >&2; exit 1; }
command -v sha256sum >/dev/null || { echo "vendor-assets: sha256sum is missing" >&2; exit 1; }

out=keyvault-admin/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "bootstrap@$BOOTSTRAP_VERSION" "chart.js@$CHARTJS_VERSION" >/dev/null)
mkdir -p "$work/bootstrap" "$work/chartjs"
tar -xzf "$work/bootstrap-$BOOTSTRAP_VERSION.tgz" -C "$work/bootstrap" --strip-components=1
tar -xzf "$work/chart.js-$CHARTJS_VERSION.tgz" -C "$work/chartjs" --strip-components=1

# Early 4.x releases shipped only dist/chart.umd.js (itself minified); 4.6 ships
# dist/chart.umd.min.js as well, which is taken. Served as chart.umd.min.js either way.
chart_src="$work/chartjs/dist/chart.umd.min.js"
[[ -f "$chart_src" ]] || chart_src="$work/chartjs/dist/chart.umd.js"

rm -rf "$out"
mkdir -p "$out"
# Source path in the tarball -> name served.
copy() {
    [[ -f "$1" ]] || { echo "vendor-assets: $1 is not in the package" >&2; exit 1; }
    # Drops the source-map comment wherever it sits (the last line, in these builds).
    sed -E '/^[[:space:]]*(\/\/# sourceMappingURL=.*|\/\*# sourceMappingURL=.*\*\/)[[:space:]]*$/d' \
        "$1" >"$out/$2"
    if grep -q 'sourceMappingURL' "$out/$2"; then
        echo "vendor-assets: $2 still names a source map" >&2
        exit 1
    fi
}
copy "$work/bootstrap/dist/css/bootstrap.min.css" bootstrap.min.css
copy "$work/bootstrap/dist/js/bootstrap.bundle.min.js" bootstrap.bundle.min.js
copy "$work/bootstrap/LICENSE" LICENSE-bootstrap.txt
copy "$chart_src" chart.umd.min.js
copy "$work/chartjs/LICENSE.md" LICENSE-chartjs.md

licence() { sed -nE 's/^[[:space:]]*"license":[[:space:]]*"([^"]+)".*/\1/p' "$1/package.json" | head -1; }
bootstrap_licence="$(licence "$work/bootstrap")"
chartjs_licence="$(licence "$work/chartjs")"
sum() { sha256sum "$out/$1" | cut -d' ' -f1; }

{
    echo "# Vendored dashboard assets"
    echo
    echo "Written by \`scripts/vendor-assets.sh\`; do not edit by hand. To refresh (or, after"
    echo "changing the versions pinned at the script's top, to upgrade), run from the repository root:"
    echo
    echo "    scripts/vendor-assets.sh"
    echo
    echo "The \`sourceMappingURL\` comments are removed: the maps are not shipped."
    echo
    echo "| package | version | licence | source in the package |"
    echo "|---|---|---|---|"
    echo "| bootstrap | $BOOTSTRAP_VERSION | $bootstrap_licence | \`dist/css/bootstrap.min.css\`, \`dist/js/bootstrap.bundle.min.js\` (includes Popper), \`LICENSE\` |"
    echo "| chart.js | $CHARTJS_VERSION | $chartjs_licence | \`dist/${chart_src##*/dist/}\` (UMD, minified), \`LICENSE.md\` |"
    echo
    echo "| file | SHA-256 |"
    echo "|---|---|"
    for f in bootstrap.min.css bootstrap.bundle.min.js chart.umd.min.js LICENSE-bootstrap.txt LICENSE-chartjs.md; do
        echo "| \`$f\` | \`$(sum "$f")\` |"
    done
} >"$out/VERSIONS.md"

echo "vendor-assets: bootstrap $BOOTSTRAP_VERSION, chart.js $CHARTJS_VERSION -> $out" >&2
