import warnings

# Megatron-Core announces its Apex/TE fallbacks on import (expected off GPU machines).
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")

from recipes.cli import main  # noqa: E402

main()
