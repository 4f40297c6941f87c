# Regenerates ${PROJECT_BINARY_DIR}/generated/shardlora_git_commit.h on every build, but
# rewrites it only when the commit changes, so nothing recompiles for nothing.
set(SHARDLORA_GIT_HEADER ${PROJECT_BINARY_DIR}/generated/shardlora_git_commit.h)
add_custom_target(shardlora_git_commit
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DOUTPUT=${SHARDLORA_GIT_HEADER}
          -P ${PROJECT_SOURCE_DIR}/cmake/WriteGitCommit.cmake
  BYPRODUCTS ${SHARDLORA_GIT_HEADER}
  COMMENT "Recording the git commit")
