# shardlora::torch: libtorch, with libstdc++ named before it on the link line.
# PyTorch's wheels (2.5 on) export std::filesystem functions that they link statically from a
# newer libstdc++ (pytorch/pytorch#133437). Where libtorch comes first, the linker (with a static
# libstdc++) or the loader (libtorch earlier among the needed libraries) binds our
# std::filesystem calls to those copies, and std::filesystem::remove_all then calls through a
# null pointer. libstdc++ named between our code and libtorch provides its own definitions first.
add_library(shardlora_torch INTERFACE)
add_library(shardlora::torch ALIAS shardlora_torch)
if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_link_libraries(shardlora_torch INTERFACE stdc++)
endif()
target_link_libraries(shardlora_torch INTERFACE torch)
