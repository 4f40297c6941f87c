# Use ccache when present. Sloppiness for pch_defines/time_macros lets ccache cache
# translation units that use the torch precompiled header.
find_program(SHARDLORA_CCACHE ccache)
if(SHARDLORA_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(_launcher ${CMAKE_COMMAND} -E env "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime" ${SHARDLORA_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${_launcher})
  message(STATUS "ccache: ${SHARDLORA_CCACHE}")
endif()
