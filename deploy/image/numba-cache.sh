#!/bin/sh
# Runs in the image build once the Python packages are installed (bentofile.yaml
# docker.setup_script). librosa.filters.mel imports librosa.util.utils, which compiles numba
# ufuncs: ~45 s of every worker's start in a fresh container. Compiled here, they load from
# librosa's __pycache__ at start-up instead. The service user must own those directories, since
# numba only uses a cache directory it can write to (on a CPU unlike the build machine's it
# compiles again, and writes there).
set -eu
python -c "import librosa.util.utils"
librosa_dir=$(python -c "import os, librosa; print(os.path.dirname(librosa.__file__))")
find "$librosa_dir" -type d -name __pycache__ -exec chown -R "${BENTO_USER:-bentoml}:${BENTO_USER:-bentoml}" {} +
echo "numba cache for librosa: $(find "$librosa_dir" -name '*.nbi' | wc -l) functions"
