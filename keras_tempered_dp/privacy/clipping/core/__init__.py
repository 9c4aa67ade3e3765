"""What both backends' engines share, whatever differentiates the step.

The norm contract (:mod:`.norm_contract`), the registry of norm functions
(:mod:`.registry`), which rows are clipped together (:mod:`.groups`), the
route decisions (:mod:`.routes`, :mod:`.conv_cost`), the noise's standard
deviation on the host (:mod:`.noise_std`) and the engines' validated
settings (:mod:`.engine_base`).
"""
