"""Preference data: every source ends as `datasets.Dataset`s in one documented format (preference.py).

The data layer reads, converts, validates and tokenizes; it knows nothing of models or trainers.
"""

from train.data.preference import (  # noqa: F401  (the data layer's public names)
    JUDGES,
    PreferenceData,
    check_config,
    load_preference_data,
    prepare,
)
