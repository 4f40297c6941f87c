# Resolves SHARDLORA_NCCL (ON|OFF|AUTO) into SHARDLORA_WITH_NCCL and an imported target
# shardlora::nccl. Searched under NCCL_HOME, the CUDA toolkit and the nvidia-nccl wheel layout.
shardlora_tristate(SHARDLORA_NCCL _mode)

set(SHARDLORA_WITH_NCCL OFF)
if(NOT _mode STREQUAL "OFF")
  if(NOT SHARDLORA_WITH_CUDA)
    if(_mode STREQUAL "ON")
      message(FATAL_ERROR "SHARDLORA_NCCL=ON needs CUDA (SHARDLORA_CUDA is off or nvcc was not found)")
    endif()
  else()
    set(_hints $ENV{NCCL_HOME} ${NCCL_HOME} ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_hints} PATH_SUFFIXES include)
    # NAMES_PER_DIR: the hinted directory wins over a system libnccl.so found by its first name.
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR HINTS ${_hints} PATH_SUFFIXES lib lib64)
    if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      add_library(shardlora::nccl UNKNOWN IMPORTED)
      set_target_properties(shardlora::nccl PROPERTIES
        IMPORTED_LOCATION "${NCCL_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
      set(SHARDLORA_WITH_NCCL ON)
      message(STATUS "NCCL: ${NCCL_LIBRARY}")
    elseif(_mode STREQUAL "ON")
      message(FATAL_ERROR "SHARDLORA_NCCL=ON but nccl.h / libnccl were not found (set NCCL_HOME)")
    else()
      message(STATUS "NCCL: not found")
    endif()
  endif()
endif()
