"""The conversion report as lines of text."""


def _mb(n):
    return f"{n / 2 ** 20:.3f} MB ({int(round(n)):,} bytes)"


def format_report(report):
    """The report as lines of text: packed layers, constants, warnings, sizes, int8 layers."""
    lines = []
    if "layers" in report:
        lines += _packing(report)
    if "int8" in report:
        lines += _int8(report["int8"])
    return lines


def _int8(info):
    lines = [f"int8 {layer['node']} ({layer['op']} -> {layer['int8_op']}, weight {tuple(layer['weight_shape'])}): "
             f"input peak {layer['input_peak']:.4g}, input scale {layer['input_scale']:.4g}, weight scales "
             f"{layer['weight_scale_min']:.3g} .. {layer['weight_scale_max']:.3g}" for layer in info["layers"]]
    c = info["calibration"]
    lines.append(f"int8 layers: {len(info['layers'])}, calibrated on {c['images']} images of {c['data']} "
                 f"(percentile {c['percentile']:g} of |input|"
                 + (f"; its {c['holdout_images_left_out']} held-out images left out)" if c["holdout_images_left_out"]
                    else ")"))
    if "verified" in info:
        v = info["verified"]
        which = ("other images" if v["disjoint_from_calibration"]
                 else "images (DATA has fewer than twice as many: some also calibrated on)")
        lines.append(f"int8 vs float on {v['images']} {which}: top-1 agreement {100 * v['top1_agreement']:.2f} %, "
                     f"max |logit diff| {v['max_abs_logit_diff']:.3g}; top-1 against the labels: float "
                     f"{100 * v['float_top1']:.2f} %, int8 {100 * v['int8_top1']:.2f} %")
    return lines


def _packing(report):
    lines = []
    for layer in report["layers"]:
        lines.append(f"packed {layer['layer']} ({layer['op']} pattern {layer['pattern']}, weight "
                     f"{tuple(layer['weight_shape'])} -> int64 {tuple(layer['packed_shape'])}, "
                     f"pad {tuple(layer['pad'])} value {layer['pad_value']}): "
                     f"{layer['bytes_before']:,} -> {layer['bytes_after']:,} bytes")
    for const in report["constants"]:
        lines.append(f"constant {const['constant']} ({const['kind']}, from {', '.join(const['sources'])}): "
                     f"{const['bytes_before']:,} -> {const['bytes_after']:,} bytes")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    s = report["sizes"]
    lines.append(f"binary layers packed: {len(report['layers'])}")
    lines.append(f"size before (parameter file): {_mb(s['params_file_bytes'])}")
    lines.append(f"size after (packed parameter file): {_mb(s['packed_params_bytes'])}")
    lines.append(f"theoretical size: {_mb(s['theoretical_bytes'])} from {s['theoretical_source']}; "
                 f"packed / theoretical = {s['packed_over_theoretical']:.3f}")
    if "verify" in report:
        v = report["verify"]
        lines.append(f"verified on {tuple(v['input_shape'])}: {v['layers_checked_exactly']} layers exact, max |diff| "
                     f"runtime {v['runtime_max_abs_diff']:.3g}, MXNet {v['mxnet_max_abs_diff']:.3g} "
                     f"(output scale {v['output_scale']:.3g})")
        for key, name in (("runtime", "runtime"), ("mxnet", "MXNet")):
            if v[f"{key}_samples_excused"]:
                lines.append(f"  {name}: {v[f'{key}_samples_excused']} sample(s) not compared end to end: an "
                             "activation within float rounding of a quantizer's jump was decided the other way "
                             "(everything up to it agrees)")
    return lines
