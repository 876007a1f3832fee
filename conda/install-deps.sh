#!/bin/sh
# Installs one conda spec (conda/<flavour>.yml) into the base image's interpreter. Called by the
# Dockerfiles with the spec, condaspec.py and this script bind-mounted (nothing of them stays in a layer).
#  - MCR AzureML bases: `python` is conda's (Miniconda base env); conda packages, if the spec has any,
#    are installed with conda, the pip section with that Python's pip.
#  - The stand-in base (invoke standin-base): `python` is a venv over Debian's Python; a spec with
#    conda packages beyond python/pip is refused there with a one-line error.
# Proxy/mirror settings arrive as BuildKit secrets: /run/secrets/pip.conf and /run/secrets/ca-bundle.
set -eu
spec=$1
tools=$(dirname "$0")/..

if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi
if [ -f /run/secrets/ca-bundle ]; then
    export PIP_CERT=/run/secrets/ca-bundle SSL_CERT_FILE=/run/secrets/ca-bundle \
        REQUESTS_CA_BUNDLE=/run/secrets/ca-bundle CONDA_SSL_VERIFY=/run/secrets/ca-bundle
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1

# PyYAML to read the spec: the interpreter's own if it has one, else a throwaway copy in /tmp.
if ! python -c 'import yaml' 2>/dev/null; then
    python -m pip install --quiet --target /tmp/amltrain-yaml pyyaml
    export PYTHONPATH=/tmp/amltrain-yaml
fi
python "$tools/condaspec.py" "$spec" check-python
python "$tools/condaspec.py" "$spec" conda > /tmp/conda-packages.txt
python "$tools/condaspec.py" "$spec" channels > /tmp/conda-channels.txt
python "$tools/condaspec.py" "$spec" pip > /tmp/requirements.txt
unset PYTHONPATH

if [ -s /tmp/conda-packages.txt ]; then
    if ! command -v conda >/dev/null; then
        echo "error: $spec lists conda packages ($(tr '\n' ' ' < /tmp/conda-packages.txt)) but this base image has no conda; move them to the pip: section or use a conda base" >&2
        exit 1
    fi
    # shellcheck disable=SC2046
    # "nodefaults" is not a channel: it means "only the channels listed".
    conda install --yes --name base \
        $(sed -e 's/^nodefaults$/--override-channels/' -e '/^--/!s/^/--channel /' /tmp/conda-channels.txt) \
        $(cat /tmp/conda-packages.txt)
    conda clean --all --yes
fi
python -m pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt
python -m pip check || echo "warning: pip check found conflicts (above) in the base image's environment" >&2
rm -rf /tmp/amltrain-yaml /tmp/conda-packages.txt /tmp/conda-channels.txt /tmp/requirements.txt
