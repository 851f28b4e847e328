"""`python -m avemo.bench profile`: HLO instructions named by kind, shape and flax layer."""

from avemo.bench.step_profile import hlo_instructions, hlo_scopes

# ruff: noqa: E501 -- HLO lines are long
# Shaped like XLA GPU's compiled HLO text: a tuple-shaped cuDNN custom call, a fusion whose
# computation holds a reduction, op_name metadata of the forward and backward passes.
HLO = """\
HloModule jit_train_step

%fused_reduce (param_0: bf16[4,8]) -> f32[8] {
  %param_0 = bf16[4,8]{1,0} parameter(0)
  %convert = f32[4,8]{1,0} convert(%param_0)
  %constant = f32[] constant(0)
  ROOT %reduce = f32[8]{0} reduce(%convert, %constant), dimensions={0}, to_apply=%add
}

ENTRY %main.1 (p: bf16[2,8,8,3]) -> f32[8] {
  %p = bf16[2,8,8,3]{3,2,1,0} parameter(0)
  %cudnn-conv.1 = (bf16[2,4,4,8]{3,2,1,0}, u8[0]{0}) custom-call(%p, %w), window={size=3x3 stride=2x2}, custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(BimodalModel)/BimodalModel._face_maps/alexnet/conv1/Conv_0/conv_general_dilated"}
  %cudnn-conv-bw-filter.2 = (bf16[8,3,3,3]{3,2,1,0}, u8[16]{0}) custom-call(%p, %g), custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(train_step)/transpose(jvp(BimodalModel))/BimodalModel._face_maps/alexnet/conv1/Conv_0/conv_general_dilated"}
  ROOT %loop_reduce_fusion = f32[8]{0} fusion(%x), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(train_step)/jvp(BimodalModel)/attention/reduce_sum"}
}
"""


def test_instructions_are_named_by_kind_and_shape():
    kinds = hlo_instructions(HLO)
    assert kinds["cudnn-conv.1"] == "__cudnn$convForward (bf16[2,4,4,8]"
    assert kinds["cudnn-conv-bw-filter.2"].startswith("__cudnn$convBackwardFilter")
    assert kinds["loop_reduce_fusion"] == "fusion(kInput:reduce) f32[8]"


def test_scopes_name_the_layer_and_the_pass():
    scopes = hlo_scopes(HLO)
    assert scopes["cudnn-conv.1"] == "fwd BimodalModel._face_maps/alexnet/conv1"
    assert scopes["cudnn-conv-bw-filter.2"] == "bwd BimodalModel._face_maps/alexnet/conv1"
    assert scopes["loop_reduce_fusion"] == "fwd attention"
